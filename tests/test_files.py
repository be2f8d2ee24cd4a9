"""The one way to write a file or folder atomically, and the git helper (opengato/files.py)."""

import json
import os
import re

import numpy as np
import pytest

from opengato import files


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "scores.json"
    files.atomic_write_json(path, {"a": np.float32(1.5), "b": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2]}

    def crash(*_):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        files.atomic_write_text(path, "half")
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2]}  # untouched
    assert files.temp_path(path).exists()  # the leftover carries this PID, for clean-up


def test_atomic_write_bytes_and_a_failed_block_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub" / "text.model"
    files.atomic_write_bytes(path, b"\x00old")
    files.atomic_write_bytes(path, b"\x00new")
    assert path.read_bytes() == b"\x00new"
    with pytest.raises(RuntimeError, match="writer died"):
        with files.atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert path.read_bytes() == b"\x00new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["text.model"]  # no temp left


def test_atomic_path_writes_whole_folders(tmp_path):
    path = tmp_path / "step_1"
    for text in ("old", "new"):
        with files.atomic_path(path) as tmp:
            tmp.mkdir()
            (tmp / "a").write_text(text)
            assert not (path / "a").exists() or (path / "a").read_text() == "old"
    assert (path / "a").read_text() == "new"
    with pytest.raises(OSError, match="disk full"):
        with files.atomic_path(path) as tmp:
            tmp.mkdir()
            (tmp / "a").write_text("half")
            raise OSError("disk full")
    assert (path / "a").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["step_1"]


def test_replace_dir_swaps_whole_folders(tmp_path):
    old, new = tmp_path / "shard", tmp_path / "new"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    files.replace_dir(new, old)
    assert (old / "a").read_text() == "new" and not new.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["shard"]


def test_git_commit_names_head():
    commit = files.git_commit()
    if commit is None:
        pytest.skip("not running from a git checkout")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit)
    assert re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?", files.git_commit(short=True))
