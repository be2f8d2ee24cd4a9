"""Writing files so that a crash never leaves a half-written one, and the code's git commit.

Every write goes through `atomic_path`: to a temporary name beside its destination
(``.NAME.tmp-PID``), a file or a whole folder, which then is renamed over it: a reader sees the
old one or the new one, never a mix. Leftovers of a crash carry the writer's PID so that
`checkpoint.clean_leftovers` can tell a dead writer's from a live one's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """Where opengato caches what it builds (the text model, Meta-World's goals):
    ``$OPENGATO_CACHE`` as it is at the call, else ``~/.cache/opengato``."""
    return Path(os.environ.get("OPENGATO_CACHE", Path.home() / ".cache" / "opengato"))


def temp_path(path: Path) -> Path:
    """The temporary name a write to ``path`` goes through."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """The one way a file or folder is written: the block writes the temporary path it is given
    (a file, or a folder it makes), which then replaces ``path`` (a folder through
    `replace_dir`). A block that raises leaves ``path`` as it was and deletes its temporary::

        with atomic_path(out / "table.parquet") as tmp:
            pq.write_table(table, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    _remove(tmp)  # what an earlier process with this PID left
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir():
        replace_dir(tmp, path)
    else:
        os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, data: Any, **dumps: Any) -> None:
    """`atomic_write_text` of ``json.dumps(data, indent=1, **dumps)``; numpy values become
    Python numbers and lists, anything else unknown its ``str``."""
    atomic_write_text(path, json.dumps(data, indent=1, default=_json_default, **dumps))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (model weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing any old ``dst`` (renamed aside, then deleted),
    so ``dst`` is always either the old folder or the new one. `atomic_path` uses it; call it
    directly only for a folder built elsewhere (a Minari dataset, built where Minari puts it)."""
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def git_commit(short: bool = False) -> str | None:
    """HEAD of the git checkout this package lives in, with ``-dirty`` appended when tracked
    files have uncommitted changes; outside a checkout (a source export), ``$OPENGATO_COMMIT``
    if set, else None."""
    here = Path(__file__).resolve().parent
    exported = os.environ.get("OPENGATO_COMMIT") or None
    try:
        args = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
        out = subprocess.run(args, cwd=here, capture_output=True, text=True, timeout=10)
        if out.returncode != 0 or not out.stdout.strip():
            return exported
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)  # fmt: skip
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return exported
