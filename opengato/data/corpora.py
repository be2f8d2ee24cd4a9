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
versioned: `corpora.json` records the hash of the code that builds each corpus (this module,
images.py and opengato/pydocs.py), and a stale one is rebuilt.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib
import inspect
import json
import keyword
import sys
from pathlib import Path
from typing import Any

import numpy as np

from opengato import pydocs
from opengato.data import images
from opengato.data.images import make_photos, make_scenes
from opengato.data.root import DatasetError, data_root
from opengato.files import atomic_path, atomic_write_json

CORPUS_VERSION = 1
"""Bump when the output changes in a way the source hash cannot see."""

# --------------------------------------------------------------------------- helpers


def _source_hash() -> str:
    h = hashlib.sha256(f"{CORPUS_VERSION}".encode())
    for module in (sys.modules[__name__], images, pydocs):
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


def build_text_corpus(data_dir: str | Path | None = None) -> dict[str, int]:
    """Write `text/python-docs.parquet` (columns text, source, split: `pydocs.documents`) and
    `text/qa.parquet` (question, answer, source, split). Returns row counts."""
    from pydoc_data.topics import topics

    root = data_root(data_dir)
    docs = pydocs.documents()
    qa = _qa_pairs(topics)
    _hold_out_with_their_text(qa, docs)
    _write(docs, root / "text" / "python-docs.parquet")
    _write(qa, root / "text" / "qa.parquet")
    return {"text/python-docs": len(docs), "text/qa": len(qa)}


def _hold_out_with_their_text(qa: list[dict], docs: list[dict]) -> None:
    """Settle the pairs' splits so that nothing held out is trained on (the documents' are
    settled by `pydocs.documents`). An answer is a paragraph of some document, and pydoc topics
    overlap (one topic's paragraph is in another's text), so a pair goes with the text its
    answer lies in: `train` if a training document holds it word for word, else `valid` if a
    held-out one does, else its source's split. An answer given to several questions ("Base
    class for arithmetic errors." answers three) is held out only if every one of them is."""
    text = {split: pydocs.text_of(docs, split) for split in ("train", "valid")}
    by_answer: dict[str, list[dict]] = {}
    for r in qa:
        answer = pydocs.norm(r["answer"])
        if answer in text["train"]:
            r["split"] = "train"
        elif answer in text["valid"]:
            r["split"] = "valid"
        by_answer.setdefault(answer, []).append(r)
    for rows in by_answer.values():
        if any(r["split"] == "train" for r in rows):
            for r in rows:
                r["split"] = "train"


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
                    "split": pydocs.split_of_source(source),
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
    for name in pydocs.STDLIB_MODULES:
        try:
            doc = inspect.getdoc(importlib.import_module(name)) or ""
        except Exception:
            continue
        add(f"What is the Python module {name} for?", _first_paragraph(doc), f"stdlib:{name}")
        for attr, obj, doc in pydocs.members(name):  # each documented in the module's document
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
    `_hold_out_with_their_text`; an older data root's held-out pairs can count)."""
    seen = pydocs.text_of(_read(data_root(data_dir) / "text" / "python-docs.parquet"), "train")
    answers = {pydocs.norm(a) for _, a in load_qa(data_dir, "train")}
    return sum(
        pydocs.norm(r["answer"]) in answers or pydocs.norm(r["answer"]) in seen for r in rows
    )


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
