"""The one atomic-write helper and the one git helper (opengato/files.py)."""

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
