"""The commands the README and docs show parse as the verbs' options today: a renamed or
removed option fails here, not on a reader's machine. Commands in shell blocks must parse
whole (shell variables stand for any value); inline `opengato ...` spans are often fragments
(an option named in prose, a placeholder), so only their option names are checked."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest
import tyro

from opengato.cli import VERBS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks/RESULTS.md"]
COMMAND = re.compile(r"(?:^|[\s;&(])(?:\S*/)?opengato ([a-z-]+)((?: [^;&|]*)?)")


def shown_commands() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(commands in shell blocks, inline `opengato ...` spans): (page, verb, arguments)."""
    blocks, spans = [], []
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"^\$ ", "", line.split(" #")[0].strip())
                if (m := COMMAND.search(line)) and m.group(1) in VERBS:
                    blocks.append((page.name, m.group(1), m.group(2)))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`]+)`", prose):
            m = re.match(r"(?:\S*/)?opengato ([a-z-]+)((?: [^;&|]*)?)$", " ".join(span.split()))
            if m and m.group(1) in VERBS:
                spans.append((page.name, m.group(1), m.group(2)))
    return blocks, spans


def parse(verb: str, arguments: str) -> str:
    """tyro's complaint about `opengato VERB arguments` ('' when they parse)."""
    module, cls, _, _ = VERBS[verb]
    config = getattr(importlib.import_module(module), cls)
    args = shlex.split(re.sub(r"\$\{?\w+\}?", "x", arguments))  # a shell variable: any value
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            tyro.cli(config, args=args)
    except SystemExit as e:
        return "" if e.code == 0 else err.getvalue()  # --help exits 0
    return ""


BLOCKS, SPANS = shown_commands()


def test_the_pages_show_commands():
    assert len(BLOCKS) > 40 and len(SPANS) > 100
    assert any(verb == "suite" for _, verb, _ in BLOCKS)


@pytest.mark.parametrize("page,verb,arguments", BLOCKS)
def test_a_shown_command_parses(page, verb, arguments):
    if "..." in arguments:  # elided on purpose
        pytest.skip("an elided command")
    assert parse(verb, arguments) == "", f"{page}: opengato {verb}{arguments}"


def test_inline_commands_name_only_real_options():
    wrong = [f"{page}: opengato {verb}{arguments}" for page, verb, arguments in SPANS
             if "Unrecognized options" in parse(verb, arguments)]  # fmt: skip
    assert wrong == []
