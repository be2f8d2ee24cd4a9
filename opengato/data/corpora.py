"""Text and image-caption data built from what ships with Python and installed packages.

Nothing is downloaded. Four corpora, each one Parquet file under the data root:

| name | file | rows |
| --- | --- | --- |
| `text/python-docs` | `text/python-docs.parquet` | documents: `pydoc_data.topics` + stdlib docstrings |
| `text/qa` | `text/qa.parquet` | question/answer pairs about Python keywords, topics, builtins, modules and their functions and classes |
| `vision/scenes` | `vision/scenes.parquet` | procedural 64x64 shape scenes with compositional captions |
| `vision/photos` | `vision/photos.parquet` | skimage photographs (64x64) and sklearn digits (32x32) |

Images (made in images.py) are uint8 RGB with sides a multiple of 16, stored raw (lossless).
Every row has a `split`; the scene set's `test` split holds colour-shape combinations never
seen in training, so captioning generalisation can be measured. Builds are deterministic and
versioned: `corpora.json` records the hash of the code that builds each corpus (this module
and images.py), and a stale one is rebuilt.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib
import inspect
import json
import keyword
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from opengato.data import images
from opengato.data.images import make_photos, make_scenes
from opengato.data.root import DatasetError, data_root
from opengato.files import atomic_path, atomic_write_json

CORPUS_VERSION = 1
"""Bump when the output changes in a way the source hash cannot see."""

# --------------------------------------------------------------------------- helpers


def _source_hash() -> str:
    h = hashlib.sha256(f"{CORPUS_VERSION}".encode())
    for module in (sys.modules[__name__], images):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:16]


def _write(table_rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(table_rows), tmp)


def _read(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise DatasetError(f"{path} is missing; run `opengato collect --tasks text,vision`")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:
        raise DatasetError(f"cannot read {path}: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- text

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


def _members(name: str) -> list[tuple[str, object, str]]:
    """(attribute, object, docstring) of the documented public functions and classes that
    module `name` defines itself, sorted by name."""
    module = importlib.import_module(name)
    out = []
    for attr in sorted(getattr(module, "__all__", None) or dir(module)):
        if attr.startswith("_"):
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
    parts += [f"{name}.{attr}: {doc}" for attr, _, doc in _members(name)]
    return "\n\n".join(p for p in parts if p)


def build_text_corpus(data_dir: str | Path | None = None) -> dict[str, int]:
    """Write `text/python-docs.parquet` (columns text, source, split) and `text/qa.parquet`
    (question, answer, source, split). Returns row counts."""
    from pydoc_data.topics import topics

    # Importing torch replaces inspect.getfile with a function of its own, which `_members` then
    # leaves out of inspect's document: import it first, so every process writes the same corpus.
    import torch  # noqa: F401

    root = data_root(data_dir)
    docs = [
        {
            "text": text.strip(),
            "source": f"pydoc:{name}",
            "split": _split_of_source(f"pydoc:{name}"),
        }
        for name, text in sorted(topics.items())
    ]
    for name in STDLIB_MODULES:
        try:
            text = _module_document(name)
        except Exception:  # a module missing on this platform is skipped, not fatal
            continue
        source = f"stdlib:{name}"
        docs.append({"text": text, "source": source, "split": _split_of_source(source)})
    qa = _qa_pairs(topics)
    _hold_out_together(qa, docs)
    _write(docs, root / "text" / "python-docs.parquet")
    _write(qa, root / "text" / "qa.parquet")
    return {"text/python-docs": len(docs), "text/qa": len(qa)}


QA_HELD_OUT = 0.15
"""Share of the sources (pydoc topics, builtins, stdlib modules) whose question/answer pairs
are held out (the `valid` split: never trained on, answered by evaluation), and whose documents
are held out of `text/python-docs` with them. At 5%, the share of every other corpus here, 9 of
the first 305 pairs were held out: too few for a per-question comparison of two models to tell
them apart."""


def _split_of_source(source: str) -> str:
    """The split of a text source (`pydoc:<topic>`, `builtins:<name>`, `stdlib:<module>`): its
    documents and question/answer pairs alike (an answer is a paragraph of its source's
    document, so the two are held out together). Stable: crc32, not Python's salted hash."""
    return "valid" if zlib.crc32(source.encode()) % 1000 < QA_HELD_OUT * 1000 else "train"


def _norm(text: str) -> str:
    return " ".join(text.split())


def _text_of(docs: list[dict], split: str) -> str:
    """The documents of `split`, whitespace-normalised and joined: what a substring test for
    word-for-word text reads."""
    return "\n".join(_norm(d["text"]) for d in docs if d["split"] == split)


def _hold_out_together(qa: list[dict], docs: list[dict]) -> None:
    """Settle the splits so that nothing held out is trained on. A held-out document identical
    to a training one is trained on. An answer is a paragraph of some document, and pydoc
    topics overlap (one topic's paragraph is in another's text), so a pair goes with the text
    its answer lies in: `train` if a training document holds it word for word, else `valid` if
    a held-out one does, else its source's split. An answer given to several questions ("Base
    class for arithmetic errors." answers three) is held out only if every one of them is.
    Held-out documents lose the paragraphs that training text holds (`_drop_trained_paragraphs`)."""
    train_docs = {d["text"] for d in docs if d["split"] == "train"}
    for d in docs:
        if d["text"] in train_docs:
            d["split"] = "train"
    _drop_trained_paragraphs(docs)
    text = {split: _text_of(docs, split) for split in ("train", "valid")}
    by_answer: dict[str, list[dict]] = {}
    for r in qa:
        answer = _norm(r["answer"])
        if answer in text["train"]:
            r["split"] = "train"
        elif answer in text["valid"]:
            r["split"] = "valid"
        by_answer.setdefault(answer, []).append(r)
    for rows in by_answer.values():
        if any(r["split"] == "train" for r in rows):
            for r in rows:
                r["split"] = "train"


SHARED_PARAGRAPH_CHARS = 40
"""A held-out paragraph this long or longer (whitespace-normalised) that training text holds
word for word is dropped from its held-out document."""


def _drop_trained_paragraphs(docs: list[dict]) -> None:
    """Drop from every held-out document the paragraphs that a training document holds word for
    word. pydoc topics overlap: `specialnames` repeats whole sections of `customization`,
    `numeric-types` and others, `assignment` those of `augassign`; before this, 23% of the
    held-out text's 13-word sequences were training text (0.01% after). Held-out text is what
    `val/text/loss` and the held-out text score read, so it must be unseen."""
    train = _text_of(docs, "train")
    for d in docs:
        if d["split"] != "valid":
            continue
        paragraphs = d["text"].split("\n\n")
        normed = [_norm(p) for p in paragraphs]
        kept = [p for p, n in zip(paragraphs, normed, strict=True)
                if not (len(n) >= SHARED_PARAGRAPH_CHARS and n in train)]  # fmt: skip
        if not kept:  # all of it is training text: it is a training document
            d["split"] = "train"
        elif len(kept) < len(paragraphs):
            d["text"] = "\n\n".join(kept).strip()


def _first_paragraph(text: str, limit: int = 600) -> str:
    paras = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
    # pydoc topics open with a title and an underline; skip them and code-ish paragraphs
    for p in paras:
        if any(line.strip() and set(line.strip()) <= set("*=-^~") for line in p.splitlines()):
            continue  # a title with its underline
        if len(p) > 40 and not p.startswith(("*", "=", "-", ">>>", "   ")) and " " in p:
            return " ".join(p.split())[:limit]
    return " ".join(paras[0].split())[:limit] if paras else ""


def _qa_pairs(topics: dict[str, str]) -> list[dict]:
    pairs: list[dict] = []

    def add(question: str, answer: str, source: str) -> None:
        if answer:
            pairs.append(
                {
                    "question": question,
                    "answer": answer,
                    "source": source,
                    "split": _split_of_source(source),
                }
            )

    for kw in keyword.kwlist:
        if kw in topics:
            add(
                f"What does the Python keyword {kw} do?",
                _first_paragraph(topics[kw]),
                f"pydoc:{kw}",
            )
    for name, text in sorted(topics.items()):
        if name in keyword.kwlist:
            continue
        add(f"Explain the Python topic {name}.", _first_paragraph(text), f"pydoc:{name}")
    for name in sorted(dir(builtins)):
        obj = getattr(builtins, name)
        if name.startswith("_") or not callable(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        kind = (
            "exception"
            if isinstance(obj, type) and issubclass(obj, BaseException)
            else ("type" if isinstance(obj, type) else "function")
        )
        add(f"What does the built-in {kind} {name} do?", _first_paragraph(doc), f"builtins:{name}")
    for name in STDLIB_MODULES:
        try:
            doc = inspect.getdoc(importlib.import_module(name)) or ""
        except Exception:
            continue
        add(f"What is the Python module {name} for?", _first_paragraph(doc), f"stdlib:{name}")
        for attr, obj, doc in _members(name):  # each documented in the module's document
            kind = "class" if inspect.isclass(obj) else "function"
            add(f"What does the Python {kind} {name}.{attr} do?", _first_paragraph(doc),
                f"stdlib:{name}")  # fmt: skip
    return pairs


def load_text(data_dir: str | Path | None = None, split: str = "train") -> list[str]:
    """Documents of `text/python-docs` in `split` ("train" or "valid")."""
    rows = _read(data_root(data_dir) / "text" / "python-docs.parquet")
    return [r["text"] for r in rows if r["split"] == split]


def load_qa(data_dir: str | Path | None = None, split: str = "train") -> list[tuple[str, str]]:
    """(question, answer) pairs of `text/qa` in `split` ("train" or "valid")."""
    return [(r["question"], r["answer"]) for r in load_qa_rows(data_dir, split)]


def load_qa_rows(data_dir: str | Path | None = None, split: str = "train") -> list[dict]:
    """The rows (question, answer, source, split) of `text/qa` in `split`."""
    return [r for r in _read(data_root(data_dir) / "text" / "qa.parquet") if r["split"] == split]


def trained_answers(rows: list[dict], data_dir: str | Path | None = None) -> int:
    """How many of these pairs' answers training reads anyway: word for word in a training
    document of `text/python-docs` or as a training pair's answer (0 for corpora built since
    `_hold_out_together`; an older data root's held-out pairs can count)."""
    seen = _text_of(_read(data_root(data_dir) / "text" / "python-docs.parquet"), "train")
    answers = {_norm(a) for _, a in load_qa(data_dir, "train")}
    return sum(_norm(r["answer"]) in answers or _norm(r["answer"]) in seen for r in rows)


SCENES = 20_000
"""Generated scenes in `vision/scenes`: 64% train, 4.4% valid, 31.5% test (every scene with a
held-out colour-shape pair is a test scene; a scene is valid by a hash of its image, so the same
picture is never in both train and valid). Scene i is the same whatever the count, so the
held-out scenes that evaluation captions (the first 200 of the test split) stay the same.
Trained on captions alone (gato-1m, 1,500 steps of 16 x 256 tokens), attribute accuracy on them
was 0.772 with 3,000 scenes and 0.847 with 20,000 (3.5 s more to build; benchmarks/RESULTS.md,
"Captions: the cap and more scenes")."""


def build_captions(data_dir: str | Path | None = None, scenes: int = SCENES) -> dict[str, int]:
    """Write `vision/scenes.parquet` and `vision/photos.parquet`. Returns row counts."""
    root = data_root(data_dir)
    scene_rows = make_scenes(scenes)
    _write(scene_rows, root / "vision" / "scenes.parquet")
    photo_rows = make_photos()
    _write(photo_rows, root / "vision" / "photos.parquet")
    return {"vision/scenes": len(scene_rows), "vision/photos": len(photo_rows)}


def load_captions(
    data_dir: str | Path | None = None, split: str = "train", source: str = "all"
) -> list[tuple[np.ndarray, str, dict | list | None]]:
    """(image uint8 (H, W, 3), caption, attributes) triples in `split` ("train", "valid",
    "test") from `source` ("scenes", "photos" or "all")."""
    root = data_root(data_dir)
    files = {"scenes": ["scenes"], "photos": ["photos"], "all": ["scenes", "photos"]}[source]
    out = []
    for name in files:
        for r in _read(root / "vision" / f"{name}.parquet"):
            if r["split"] != split:
                continue
            image = np.frombuffer(r["image"], np.uint8).reshape(r["height"], r["width"], 3)
            out.append(
                (image, r["caption"], json.loads(r["attributes"]) if r["attributes"] else None)
            )
    return out


# --------------------------------------------------------------------------- versioned build

_BUILDERS = {"text": build_text_corpus, "vision": build_captions}


def build(
    names: list[str], data_dir: str | Path | None = None, force: bool = False
) -> dict[str, int]:
    """Build the corpora named (`text/...`, `vision/...`) unless current; returns row counts."""
    root = data_root(data_dir)
    manifest_path = root / "corpora.json"
    manifest: dict[str, Any] = (
        json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    )
    digest = _source_hash()
    counts: dict[str, int] = {}
    for group in sorted({n.split("/")[0] for n in names}):
        entry = manifest.get(group, {})
        files_ok = all((root / n).with_suffix(".parquet").exists() for n in entry.get("counts", {}))
        if not force and entry.get("hash") == digest and files_ok and entry.get("counts"):
            counts.update(entry["counts"])
            continue
        group_counts = _BUILDERS[group](root)
        manifest[group] = {"hash": digest, "counts": group_counts}
        counts.update(group_counts)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest_path, manifest, sort_keys=True)
    return {n: c for n, c in counts.items() if n in names or n.split("/")[0] in names}
