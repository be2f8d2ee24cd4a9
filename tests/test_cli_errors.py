"""Errors reach the user as one line and an exit code, not a traceback (opengato/cli.py)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from opengato import cli
from opengato.model.checkpoint import CheckpointError

HINT = "(run with --debug for the traceback)"


@dataclass
class BoomConfig:
    """A stand-in verb's options."""

    what: str = "value"
    """Which exception run_boom raises."""


def run_boom(cfg: BoomConfig) -> int:
    if cfg.what == "interrupt":
        raise KeyboardInterrupt
    if cfg.what == "exit":
        raise SystemExit(3)
    if cfg.what == "multiline":
        raise RuntimeError("first line\n  second line\n")
    raise ValueError("bad value")


@pytest.fixture
def boom(monkeypatch):
    """Register the ``boom`` verb, served by this module."""
    monkeypatch.setitem(cli.VERBS, "boom", (__name__, "BoomConfig", "run_boom", "Fail on purpose."))


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_unknown_task_is_one_line(tmp_path, capsys):
    code = cli.main(["train", "--tasks", "nosuchtask", "--data-dir", str(tmp_path),
                     "--out-dir", str(tmp_path / "run")])  # fmt: skip
    assert code == 1
    first, hint = stderr_lines(capsys)
    assert first.startswith("opengato train: KeyError: unknown task 'nosuchtask'")
    assert hint == HINT


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    code = cli.main(["eval", str(tmp_path / "nope"), "--data-dir", str(tmp_path)])
    assert code == 1
    first, hint = stderr_lines(capsys)
    assert (
        first == f"opengato eval: CheckpointError: checkpoint '{tmp_path / 'nope'}' does not exist"
    )
    assert hint == HINT


def test_debug_anywhere_shows_the_traceback(tmp_path):
    # tyro never sees --debug (it would refuse an unknown flag with SystemExit)
    with pytest.raises(CheckpointError, match="does not exist"):
        cli.main(["eval", "--debug", str(tmp_path / "nope"), "--data-dir", str(tmp_path)])
    with pytest.raises(CheckpointError):
        cli.main(["eval", str(tmp_path / "nope"), "--data-dir", str(tmp_path), "--debug"])


def test_messages_are_flattened_to_one_line(boom, capsys):
    assert cli.main(["boom", "--what", "multiline"]) == 1
    assert stderr_lines(capsys) == ["opengato boom: RuntimeError: first line second line", HINT]
    assert cli.main(["boom"]) == 1
    assert stderr_lines(capsys)[0] == "opengato boom: ValueError: bad value"


def test_interrupt_exits_130_with_one_line(boom, capsys):
    assert cli.main(["boom", "--what", "interrupt"]) == 130
    assert stderr_lines(capsys) == ["opengato boom: interrupted"]
    with pytest.raises(KeyboardInterrupt):
        cli.main(["boom", "--what", "interrupt", "--debug"])


def test_system_exit_and_tyro_errors_pass_through(boom):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["boom", "--what", "exit"])
    assert exit_.value.code == 3
    with pytest.raises(SystemExit) as exit_:
        cli.main(["boom", "--no-such-option", "1"])  # tyro's usage error
    assert exit_.value.code == 2


def test_command_line_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "opengato.cli", "eval", str(tmp_path / "nope"),
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"opengato eval: CheckpointError: checkpoint '{tmp_path / 'nope'}' does not exist",
        HINT,
    ]


def test_version_names_the_package_torch_and_python(capsys):
    import platform

    import torch

    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("opengato ") and f"torch {torch.__version__}" in out
    assert out.endswith(f"Python {platform.python_version()}")
    assert cli.main(["-V"]) == 0 and capsys.readouterr().out.strip() == out
