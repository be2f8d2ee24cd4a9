"""Your own environment, end to end (docs/your-own-env.md): `examples/my_gridworld.py`, a
Gymnasium gridworld with a Dict observation that opengato has never heard of, goes through the
real `opengato` command (collect, fine-tune from a checkpoint, eval with worker processes,
report) with `--import`; and the other two ways a module of tasks reaches the registry
($OPENGATO_IMPORT, an `opengato.tasks` entry point)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from opengato import tasks
from opengato.cli import main
from opengato.data.episodes import load_episodes
from opengato.data.scores import load_scores
from opengato.model.checkpoint import save_checkpoint
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.plugins import TaskModuleError, load_entry_points, split_modules
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig
from opengato.training.config import TrainConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_gridworld.py"
TASKS = ["mygrid/GridWorld-v0", "mygrid/GridWorld7x7-v0"]
TOY = ["--preset", "gato-tiny", "--context-len", "64", "--tokenizer.text-vocab-size", "1024"]


@pytest.fixture(autouse=True)
def forget_the_example():
    """Each test imports the example afresh (its import registers its tasks, which the
    registry fixture of conftest.py drops after the test)."""
    yield
    sys.modules.pop(EXAMPLE.stem, None)
    gym.registry.pop("MyGridWorld-v0", None)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A gato-tiny checkpoint standing in for a pretrained one (`runs/demo/train`)."""
    tokenizer = TokenizerConfig(text_vocab_size=1024)
    torch.manual_seed(0)
    model_config = make_config("gato-tiny", Tokenizer(tokenizer).vocab_size, context_len=64)
    recipe = TrainConfig(preset="gato-tiny", context_len=64, tokenizer=tokenizer)
    path = tmp_path_factory.mktemp("pretrained") / "step_1"
    return str(save_checkpoint(path, Gato(model_config), model_config, tokenizer, asdict(recipe)))


def test_your_own_env_end_to_end(tmp_path, pretrained, capsys):
    """The tutorial's commands at toy scale: every verb imports the example with --import (before
    or after the verb), and collect and eval run it in 2 worker processes."""
    data, run = str(tmp_path / "data"), tmp_path / "run"
    imp = ["--import", str(EXAMPLE)]
    code = main([*imp, "collect", "--tasks", "mygrid", "--episodes", "6",
                 "--random-episodes", "6", "--data-dir", data, "--workers", "2"])  # fmt: skip
    assert code == 0
    scores = load_scores(data)
    for name in TASKS:  # the expert solves every episode; the random policy scores below it
        assert scores[name]["expert_success_rate"] == 1.0
        assert scores[name]["expert"] > scores[name]["random"]
        episode = load_episodes(name, data)[0]
        assert set(episode.observations) == {"agent", "goal", "time_left"}
    code = main(["train", *imp, "--init", pretrained, *TOY, "--tasks", "mygrid",
                 "--batch-size", "2", "--steps", "4", "--eval-every", "2", "--eval-batches", "1",
                 "--data-dir", data, "--out-dir", str(run), "--no-progress"])  # fmt: skip
    assert code == 0
    assert f"loaded weights from {pretrained}" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    code = main(["eval", str(run), *imp, "--tasks", *TASKS, "--episodes", "3", "--num-envs", "3",
                 "--workers", "2", "--data-dir", data, "--out", str(out)])  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    for name in TASKS:
        r = results["tasks"][name]
        assert "error" not in r and r["n_episodes"] == 3 and r["n_errors"] == 0
        assert r["prompts_available"] > 0 and r["normalized_score"] is not None
    assert main(["report", str(out), "--out-dir", str(tmp_path / "report")]) == 0
    assert all(name in (tmp_path / "report" / "report.md").read_text() for name in TASKS)


def test_import_errors_are_one_line_naming_the_module(tmp_path, capsys):
    assert main(["collect", "--import"]) == 2
    assert "--import needs a module" in capsys.readouterr().err
    assert main(["--import", "no_such_module_anywhere", "collect", "--tasks", "x/y"]) == 1
    err = capsys.readouterr().err
    assert "TaskModuleError: --import no_such_module_anywhere: cannot import it" in err
    assert main([f"--import={tmp_path / 'missing.py'}", "eval", "uniform"]) == 1
    assert "no file" in capsys.readouterr().err
    assert split_modules(["a.b, c", "", "d.py"]) == ["a.b", "c", "d.py"]


def _fresh_registry(monkeypatch) -> None:
    """The registry as a new process finds it: built on first use."""
    tasks._REGISTRY.clear()
    monkeypatch.setattr(tasks, "_BUILTIN_DONE", False)


def test_the_environment_variable_imports_on_first_use(monkeypatch):
    monkeypatch.setenv("OPENGATO_IMPORT", f"{EXAMPLE}")
    _fresh_registry(monkeypatch)
    assert tasks.list_tasks("mygrid") == TASKS
    assert "classic/CartPole-v1" in tasks.list_tasks()  # the built-in suites as well


def _install_plugin(root: Path, value: str, module_source: str) -> None:
    """A package with an `opengato.tasks` entry point, installed on sys.path under `root`."""
    (root / "myplugin.py").write_text(module_source)
    info = root / "myplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[opengato.tasks]\nmine = {value}\n")


def test_an_entry_point_registers_tasks_on_first_use(tmp_path, monkeypatch):
    source = (
        "import gymnasium as gym\n"
        "from opengato.tasks import Task, register_task\n"
        "def register():\n"
        "    register_task(Task(name='plug/Cart', domain='plug', make_expert=None,\n"
        "        max_episode_steps=10, make_env=lambda render_mode=None: gym.make('CartPole-v1')))\n"
    )
    _install_plugin(tmp_path, "myplugin:register", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myplugin", raising=False)
    _fresh_registry(monkeypatch)
    assert tasks.get_task("plug/Cart").domain == "plug"


def test_a_broken_entry_point_is_named(tmp_path, monkeypatch):
    _install_plugin(tmp_path, "myplugin:register", "def register():\n    raise OSError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myplugin", raising=False)
    with pytest.raises(TaskModuleError, match="entry point 'mine' = 'myplugin:register' of "
                                              "package 'myplugin'.*OSError: boom"):  # fmt: skip
        load_entry_points()
