"""Python's own documentation as documents, each in its split: what the text corpus trains on
and holds out, and what the built-in SentencePiece text model is trained on (its training
documents only, so held-out text is never in its vocabulary).

A document is a pydoc topic (the language reference) or a stdlib module's document (its
docstring and its documented functions and classes). A source is held out by a stable hash of
its name (`split_of_source`); `documents` then settles the splits so that no held-out text is
training text. `opengato.data.corpora` writes these documents and the question/answer pairs
asked about them; `opengato.tokens.text` trains the default text model on the training ones.
Shared by both (data sits above tokens in the package's layers); it imports nothing of the
project's, nor torch.
"""

from __future__ import annotations

import importlib
import inspect
import zlib

# Stdlib modules whose docstrings are clean prose and import without side effects.
STDLIB_MODULES = (
    "abc argparse array ast asyncio base64 bisect bz2 calendar cmath codecs collections "
    "colorsys configparser contextlib copy csv dataclasses datetime decimal difflib dis "
    "email enum fileinput fnmatch fractions functools getopt gettext glob graphlib gzip "
    "hashlib heapq hmac html http inspect io ipaddress itertools json keyword linecache "
    "locale logging lzma math mimetypes numbers operator optparse os pathlib pickle "
    "platform pprint queue random re sched secrets shlex shutil socket sqlite3 statistics "
    "string struct subprocess tarfile tempfile textwrap threading time timeit tokenize "
    "traceback types typing unicodedata unittest urllib uuid warnings weakref xml zipfile zlib"
).split()

HELD_OUT = 0.15
"""Share of the sources (pydoc topics, builtins, stdlib modules) held out: their documents are
held out of `text/python-docs` and their question/answer pairs are the `valid` split of
`text/qa` (never trained on, answered by evaluation). At 5%, the share of every other corpus
here, 9 of the first 305 pairs were held out: too few for a per-question comparison of two
models to tell them apart."""

SHARED_PARAGRAPH_CHARS = 40
"""A held-out paragraph this long or longer (whitespace-normalised) that training text holds
word for word is dropped from its held-out document."""


def split_of_source(source: str) -> str:
    """The split of a text source (`pydoc:<topic>`, `builtins:<name>`, `stdlib:<module>`): its
    documents and question/answer pairs alike (an answer is a paragraph of its source's
    document, so the two are held out together). Stable: crc32, not Python's salted hash."""
    return "valid" if zlib.crc32(source.encode()) % 1000 < HELD_OUT * 1000 else "train"


def norm(text: str) -> str:
    """Whitespace-normalised text: what a word-for-word comparison reads."""
    return " ".join(text.split())


def text_of(docs: list[dict], split: str) -> str:
    """The documents of `split`, whitespace-normalised and joined: what a substring test for
    word-for-word text reads."""
    return "\n".join(norm(d["text"]) for d in docs if d["split"] == split)


_REPLACED_ON_IMPORT = {("inspect", "getfile")}
"""Functions that another package replaces with its own when imported (torch replaces
inspect.getfile), so that a module's document would depend on what the process had imported:
left out always."""


def members(name: str) -> list[tuple[str, object, str]]:
    """(attribute, object, docstring) of the documented public functions and classes that
    module `name` defines itself, sorted by name."""
    module = importlib.import_module(name)
    out = []
    for attr in sorted(getattr(module, "__all__", None) or dir(module)):
        if attr.startswith("_") or (name, attr) in _REPLACED_ON_IMPORT:
            continue
        obj = getattr(module, attr, None)
        if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", name) != name:
            continue
        doc = inspect.getdoc(obj)
        if doc:
            out.append((attr, obj, doc))
    return out


def _module_document(name: str) -> str:
    module = importlib.import_module(name)
    parts = [f"Module {name}.", inspect.getdoc(module) or ""]
    parts += [f"{name}.{attr}: {doc}" for attr, _, doc in members(name)]
    return "\n\n".join(p for p in parts if p)


def documents() -> list[dict]:
    """The documents (text, source, split) in a fixed order: the pydoc topics, then the
    documents of `STDLIB_MODULES` (a module missing on this platform is skipped), their splits
    settled: a held-out document identical to a training one is trained on, and held-out
    documents lose the paragraphs that training text holds (`_drop_trained_paragraphs`).
    Deterministic for a given Python."""
    from pydoc_data.topics import topics

    docs = [
        {"text": text.strip(), "source": f"pydoc:{name}", "split": split_of_source(f"pydoc:{name}")}
        for name, text in sorted(topics.items())
    ]
    for name in STDLIB_MODULES:
        try:
            text = _module_document(name)
        except Exception:  # a module missing on this platform is skipped, not fatal
            continue
        source = f"stdlib:{name}"
        docs.append({"text": text, "source": source, "split": split_of_source(source)})
    train_docs = {d["text"] for d in docs if d["split"] == "train"}
    for d in docs:
        if d["text"] in train_docs:
            d["split"] = "train"
    _drop_trained_paragraphs(docs)
    return docs


def _drop_trained_paragraphs(docs: list[dict]) -> None:
    """Drop from every held-out document the paragraphs that a training document holds word for
    word. pydoc topics overlap: `specialnames` repeats whole sections of `customization`,
    `numeric-types` and others, `assignment` those of `augassign`; before this, 23% of the
    held-out text's 13-word sequences were training text (0.01% after). Held-out text is what
    `val/text/loss` and the held-out text score read, so it must be unseen."""
    train = text_of(docs, "train")
    for d in docs:
        if d["split"] != "valid":
            continue
        paragraphs = d["text"].split("\n\n")
        normed = [norm(p) for p in paragraphs]
        kept = [p for p, n in zip(paragraphs, normed, strict=True)
                if not (len(n) >= SHARED_PARAGRAPH_CHARS and n in train)]  # fmt: skip
        if not kept:  # all of it is training text: it is a training document
            d["split"] = "train"
        elif len(kept) < len(paragraphs):
            d["text"] = "\n\n".join(kept).strip()
