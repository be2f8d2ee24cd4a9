"""Training from a checkpoint: `opengato train --resume` faults (changed options, metrics logged
after the last checkpoint, what a crash mid-write leaves in the run folder) and `--init`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_train import config, data_dir  # noqa: F401  (the tiny data root fixture)

from opengato.model import checkpoint
from opengato.model.checkpoint import (
    CheckpointError,
    clean_leftovers,
    load_model,
    save_checkpoint,
)
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.tokens import text
from opengato.tokens.tokenizer import Tokenizer
from opengato.training.resume import config_changes, load_train_state
from opengato.training.train import lr_lambda, run_train


class Crash(Exception):
    pass


def _metrics(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def _steps(out, key: str) -> list[int]:
    return [m["step"] for m in _metrics(out) if key in m]


def _crash_at_second_save(monkeypatch):
    """Make the second checkpoint write die before it starts (the first one completes)."""
    real_save, calls = checkpoint.save_checkpoint, []

    def save(*args, **kw):
        calls.append(kw.get("step"))
        if len(calls) == 2:
            raise Crash(kw.get("step"))
        return real_save(*args, **kw)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    return real_save


def test_resume_refuses_changed_options(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    run_train(config(data_dir, out, steps=2, save_every=2, eval_every=0))
    recorded = (out / "train_config.json").read_bytes()
    metrics = (out / "metrics.jsonl").read_bytes()
    changed = dict(lr=2e-3, batch_size=2, seed=1, tasks="classic/CartPole-v1,text/qa",
                   context_len=128, warmup_steps=3)  # fmt: skip
    with pytest.raises(ValueError, match="--resume: .* was trained with other options") as err:
        run_train(config(data_dir, out, steps=4, save_every=2, eval_every=0, resume=True,
                         **changed))  # fmt: skip
    msg = str(err.value)
    for line in ("lr: 0.001 -> 0.002", "batch_size: 4 -> 2", "seed: 0 -> 1",
                 "tasks: 'classic/CartPole-v1,text/qa,vision/scenes' -> 'classic/CartPole-v1,text/qa'",
                 "context_len: 64 -> 128", "warmup_steps: 2 -> 3", "--resume-force"):  # fmt: skip
        assert line in msg
    assert "steps" not in msg.replace("warmup_steps", "")  # a longer run is not a change
    # one field alone is enough
    with pytest.raises(ValueError, match=r"other options: grad_clip: 1\.0 -> 0\.5\. "):
        run_train(config(data_dir, out, steps=4, resume=True, grad_clip=0.5))
    # another number of processes draws other windows: refused before any process starts
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORLD_SIZE", "2")
        with pytest.raises(ValueError, match=r"other options: processes: 1 -> 2\. "):
            run_train(config(data_dir, out, steps=4, resume=True))
    # nothing of the refused runs was recorded
    assert (out / "train_config.json").read_bytes() == recorded
    assert (out / "metrics.jsonl").read_bytes() == metrics
    assert checkpoint.read_config(out)["step"] == 2


def test_resume_may_extend_and_change_what_is_logged(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    run_train(config(data_dir, out, steps=2, save_every=2, eval_every=0))
    s = run_train(config(data_dir, out, steps=4, resume=True, log_every=2, eval_every=4,
                         save_every=4, keep_checkpoints=1, progress=False, device="cpu"))  # fmt: skip
    assert s["start_step"] == 2 and len(s["train_losses"]) == 2
    assert json.loads((out / "train_config.json").read_text())["steps"] == 4
    # the new logging took effect: a checkpoint kept (step 4's), validated at 4, logged at 4
    assert sorted(p.name for p in out.glob("step_*")) == ["step_0000004"]
    assert _steps(out, "train/loss") == [1, 2, 4] and _steps(out, "val/loss") == [4]


def test_resume_force_uses_and_records_the_new_options(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    run_train(config(data_dir, out, steps=2, save_every=2, eval_every=0))
    new = config(data_dir, out, steps=4, save_every=2, eval_every=0, resume=True,
                 resume_force=True, lr=5e-3, warmup_steps=1, weight_decay=0.0)  # fmt: skip
    s = run_train(new)
    assert s["start_step"] == 2
    lrs = {m["step"]: m["train/lr"] for m in _metrics(out) if "train/lr" in m}
    assert lrs[3] == pytest.approx(5e-3 * lr_lambda(3, new))  # the new peak and schedule
    assert lrs[4] == pytest.approx(5e-3 * lr_lambda(4, new))
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["lr"] == 5e-3 and recorded["weight_decay"] == 0.0
    ck = load_train_state(out)
    assert [g["weight_decay"] for g in ck["optimizer"]["param_groups"]] == [0.0, 0.0]
    assert [g["initial_lr"] for g in ck["optimizer"]["param_groups"]] == [5e-3, 5e-3]


def test_resume_does_not_repeat_metrics(data_dir, tmp_path, monkeypatch):  # noqa: F811
    """Crash at step 4 (checkpoint at 2, metrics up to 4): the resumed run's metrics.jsonl has
    each step once, and the losses of an uninterrupted run."""
    kw = dict(steps=6, save_every=2, eval_every=2, log_every=1)
    full = run_train(config(data_dir, tmp_path / "full", **kw))
    out = tmp_path / "run"
    real_save = _crash_at_second_save(monkeypatch)
    with pytest.raises(Crash):
        run_train(config(data_dir, out, **kw))
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    assert _steps(out, "train/loss") == [1, 2, 3, 4]  # logged past the last checkpoint (2)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # a line cut short by the crash
    rest = run_train(config(data_dir, out, resume=True, **kw))
    assert rest["start_step"] == 2
    assert _steps(out, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert _steps(out, "val/loss") == [0, 2, 4, 6]
    losses = [m["train/loss"] for m in _metrics(out) if "train/loss" in m]
    assert losses == full["train_losses"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_a_crashed_write_are_cleaned(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    run_train(config(data_dir, out, steps=2, save_every=2, eval_every=0))
    dead = _dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / f".step_0000004.tmp-{dead}").mkdir()  # a checkpoint write killed halfway
        (out / f".step_0000004.tmp-{dead}" / "model.safetensors").write_bytes(b"half")
        (out / f".latest.txt.tmp-{dead}").write_text("step_0000004\n")
        (out / f".metrics.jsonl.tmp-{dead}").write_text("")
        (out / f".step_0000006.tmp-{alive.pid}").mkdir()  # another process, still writing
        (out / ".notes").write_text("mine")  # not a name opengato writes
        s = run_train(config(data_dir, out, steps=3, save_every=3, eval_every=0, resume=True))
        assert s["start_step"] == 2
        left = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
        assert left == [".notes", f".step_0000006.tmp-{alive.pid}"]
    finally:
        alive.kill()
        alive.wait()


def test_crash_between_the_renames_is_repaired(data_dir, tmp_path):  # noqa: F811
    """Overwriting a checkpoint moves the old one aside first: a crash right then leaves
    latest.txt naming a missing folder. The next --resume puts it back and continues."""
    out = tmp_path / "run"
    run_train(config(data_dir, out, steps=2, save_every=2, eval_every=0))
    os.replace(out / "step_0000002", out / f".step_0000002.old-{_dead_pid()}")
    s = run_train(config(data_dir, out, steps=3, save_every=3, eval_every=0, resume=True))
    assert s["start_step"] == 2


def test_resume_from_a_broken_run_folder_is_refused(data_dir, tmp_path):  # noqa: F811
    """latest.txt naming a missing checkpoint: refuse, rather than train again from step 0 and
    overwrite the run's metrics."""
    out = tmp_path / "run"
    run_train(config(data_dir, out, steps=2, save_every=2, eval_every=0))
    (out / "latest.txt").write_text("step_0000009\n")
    metrics = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        run_train(config(data_dir, out, steps=3, eval_every=0, resume=True))
    assert (out / "metrics.jsonl").read_bytes() == metrics


def test_resume_refuses_another_text_model(data_dir, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "run"
    run_train(config(data_dir, out, steps=2, save_every=2, eval_every=0))
    real = text.default_text_corpus()
    monkeypatch.setenv("OPENGATO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(text, "default_text_corpus", lambda: real[len(real) // 3 :])
    shards = tmp_path / "shards"
    with pytest.raises(CheckpointError, match="another text model"):
        run_train(config(data_dir, out, steps=3, resume=True, shard_dir=str(shards)))
    assert not shards.exists()  # refused before any tokenising


def test_failed_checkpoint_write_leaves_no_temp_folder(tmp_path, monkeypatch):
    tok = Tokenizer()
    cfg = make_config("gato-tiny", tok.vocab_size)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "step_1", Gato(cfg), cfg, tok.config, step=1)
    assert list(tmp_path.iterdir()) == []
    assert clean_leftovers(tmp_path) == []


def test_config_changes_lists_nested_fields_and_new_ones():
    old = {"lr": 1e-3, "tokenizer": {"num_bins": 1024}, "w": {"a": 1, "b": 2}}
    new = {"lr": 1e-3, "tokenizer": {"num_bins": 512}, "w": {"a": 1, "b": 3}, "added": 5,
           "steps": 9}  # fmt: skip
    defaults = {"added": 4}
    assert config_changes(old, new, defaults, {"steps", "tokenizer"}) == [
        "w.b: 2 -> 3",
        "added: 4 -> 5",  # a field the checkpoint predates counts as its default
    ]
    assert config_changes(old, new, defaults, {"steps", "w.b"}) == [
        "tokenizer.num_bins: 1024 -> 512",
        "added: 4 -> 5",
    ]


def test_cli_resume_refusal_and_force(data_dir, tmp_path, capsys):  # noqa: F811
    from opengato.cli import main

    out = tmp_path / "cli"
    args = ["train", "--preset", "gato-tiny", "--tasks", "classic/CartPole-v1",
            "--data-dir", str(data_dir), "--out-dir", str(out), "--batch-size", "4",
            "--context-len", "64", "--eval-every", "0", "--no-progress"]  # fmt: skip
    assert main([*args, "--steps", "2"]) == 0
    capsys.readouterr()
    assert main([*args, "--steps", "3", "--resume", "--lr", "0.002"]) == 1
    err = capsys.readouterr().err
    assert "lr: 0.0001 -> 0.002" in err and "--resume-force" in err
    assert main([*args, "--steps", "3", "--resume", "--lr", "0.002", "--resume-force"]) == 0
    assert json.loads((out / "train_config.json").read_text())["lr"] == 0.002


def test_init_fine_tunes_from_checkpoint(data_dir, tmp_path):  # noqa: F811
    first = run_train(config(data_dir, tmp_path / "a", steps=2, eval_every=0))
    ft = run_train(
        config(data_dir, tmp_path / "b", steps=2, eval_every=0, init=first["checkpoint"])
    )
    scratch = run_train(config(data_dir, tmp_path / "c", steps=2, eval_every=0))
    assert ft["train_losses"][0] != scratch["train_losses"][0]
    # The loaded weights are the ones trained: a step at lr 1e-12 moves each weight by ~1e-12
    # (Adam's steps are about lr in size), so they come out as they went in; a fresh
    # initialisation would differ by ~0.02.
    kept = run_train(config(data_dir, tmp_path / "d", steps=1, eval_every=0, lr=1e-12,
                            warmup_steps=0, init=first["checkpoint"]))  # fmt: skip
    before, after = load_model(first["checkpoint"])[0], load_model(kept["checkpoint"])[0]
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-9, rtol=0, msg=name)
