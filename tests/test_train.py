"""The training loop, checkpoints, exact resume, DDP and the `opengato train` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from opengato.batches.mixture import Mixture
from opengato.batches.sources import build_shards, resolve_sources
from opengato.batches.windows import Split
from opengato.model import checkpoint
from opengato.model.checkpoint import CheckpointError, load_model, save_checkpoint
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.tokens.tokenizer import Tokenizer
from opengato.training.config import TrainConfig
from opengato.training.resume import load_train_state
from opengato.training.train import lr_lambda, run_train

TASKS = "classic/CartPole-v1,text/qa,vision/scenes"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data root with 8 CartPole demonstrations (a linear expert rule), the QA corpus and 20
    captioned scenes, written through datasets.py and corpora.py."""
    from opengato.data import corpora
    from opengato.data.episodes import Episode, write_minari
    from opengato.tasks import get_task

    root = tmp_path_factory.mktemp("data")
    task = get_task("classic/CartPole-v1")
    env = task.make_env()
    episodes = []
    for i in range(8):
        o, _ = env.reset(seed=i)
        obs, acts, rews = [o], [], []
        while len(acts) < 40:
            a = int(o[2] + 0.5 * o[3] > 0)
            o, r, term, trunc, _ = env.step(a)
            obs.append(o), acts.append(a), rews.append(r)
            if term or trunc:
                break
        episodes.append(Episode(np.array(obs), np.array(acts), np.array(rews),
                                term, not term, seed=i))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_minari(task, episodes, root, {"seeds": list(range(8))})
    corpora.build_text_corpus(root)
    corpora.build_captions(root, scenes=20)
    return root


def config(data_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(preset="gato-tiny", tasks=TASKS, data_dir=str(data_dir), out_dir=str(out),
                steps=6, batch_size=4, context_len=64, lr=1e-3, warmup_steps=2, eval_every=3,
                eval_batches=1, save_every=3, log_every=1, progress=False)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_resume_after_interruption_matches(data_dir, tmp_path, monkeypatch):
    """Run 3 of 6 steps, 'crash', resume: the loss sequence equals the uninterrupted run's."""
    full = run_train(config(data_dir, tmp_path / "full"))
    out = tmp_path / "run"

    class Crash(Exception):
        pass

    real_save = checkpoint.save_checkpoint

    def crash_after_first_save(*args, **kw):
        path = real_save(*args, **kw)
        raise Crash(path)

    monkeypatch.setattr(checkpoint, "save_checkpoint", crash_after_first_save)
    with pytest.raises(Crash):
        run_train(config(data_dir, out))
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    first = [json.loads(line)["train/loss"] for line in open(out / "metrics.jsonl")
             if "train/loss" in line]  # fmt: skip
    # Checkpoints hold no RNG state; an older one, with its unused "rng" entry, resumes the same.
    state_file = out / "step_0000003" / checkpoint.STATE_FILE
    state = torch.load(state_file, weights_only=True)
    assert "rng" not in state
    torch.save({**state, "rng": {"torch": torch.get_rng_state()}}, state_file)
    rest = run_train(config(data_dir, out, resume=True))
    assert rest["start_step"] == 3
    assert first + rest["train_losses"] == full["train_losses"]
    steps = [
        json.loads(line)["step"] for line in open(out / "metrics.jsonl") if "train/loss" in line
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_cli_train_end_to_end(data_dir, tmp_path):
    from opengato.cli import main

    out = tmp_path / "cli"
    args = ["train", "--preset", "gato-tiny", "--tasks", TASKS, "--data-dir", str(data_dir),
            "--out-dir", str(out), "--steps", "4", "--batch-size", "4", "--context-len", "64",
            "--eval-every", "2", "--eval-batches", "1", "--log-every", "1", "--no-progress",
            "--dtype", "bf16", "--tokenizer.text-vocab-size", "4096"]  # fmt: skip
    assert main(args) == 0
    assert (out / "latest.txt").read_text().strip() == "step_0000004"
    metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
    val = [m for m in metrics if "val/loss" in m]
    assert val and {"val/classic/action_loss", "val/qa/loss", "val/captions/loss"} <= set(val[-1])
    assert list((out / "tb").glob("events.out.tfevents.*"))
    model, tok, cfg = load_model(out)
    assert cfg["step"] == 4 and cfg["train"]["dtype"] == "bf16"
    assert tok.vocab_size == model.cfg.vocab_size and not model.training


def test_ddp_two_processes(data_dir, tmp_path):
    out = tmp_path / "ddp"
    build_shards(resolve_sources(TASKS), Tokenizer(), data_dir, data_dir / "shards")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", "-m", "opengato.cli", "train", "--preset", "gato-tiny",
           "--tasks", TASKS, "--data-dir", str(data_dir), "--out-dir", str(out), "--steps", "2",
           "--batch-size", "4", "--context-len", "64", "--eval-every", "2",
           "--eval-batches", "1", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The limit only catches a hung rendezvous: ~30 s on a quiet 2-core machine, but 120 s ran
    # out once while an evaluation shared the two cores.
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "step_0000002" / "model.safetensors").is_file()
    assert res.stdout.count("done: train loss") == 1  # only rank 0 logs


def _batch(tok: Tokenizer, data_dir: Path):
    shards = build_shards(resolve_sources(TASKS), tok, data_dir, data_dir / "shards")
    mix = Mixture(shards, 64, split=Split("all"), pad_id=tok.pad_id)
    return mix.sample_batch(np.random.default_rng(0), 6)[0]


def test_load_model_round_trip_identical_logits(data_dir, tmp_path):
    tok = Tokenizer()
    cfg = make_config("gato-tiny", tok.vocab_size, context_len=64)
    model = Gato(cfg).eval()
    save_checkpoint(tmp_path / "step_1", model, cfg, tok.config, {"x": 1}, step=1)
    loaded, tok2, config = load_model(tmp_path)
    batch = _batch(tok, data_dir)
    assert batch.patches.shape[0] > 0  # the images go through the patch embedding too
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)[0], model(batch)[0], rtol=0, atol=0)
    assert config["train"] == {"x": 1} and tok2.config == tok.config
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr()  # still tied


def test_checkpoint_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    tok = Tokenizer()
    cfg = make_config("gato-tiny", tok.vocab_size)
    model = Gato(cfg)
    save_checkpoint(tmp_path / "step_1", model, cfg, tok.config, step=1)
    before = (tmp_path / "step_1" / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with torch.no_grad():
        model.wte.weight.add_(1.0)
    for target in ("step_2", "step_1"):  # a new folder, and overwriting the old one
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(tmp_path / target, model, cfg, tok.config, step=2)
        assert (tmp_path / "latest.txt").read_text().strip() == "step_1"
        assert (tmp_path / "step_1" / "model.safetensors").read_bytes() == before
        assert not (tmp_path / "step_2").exists()
    assert load_model(tmp_path)[2]["step"] == 1


def test_checkpoint_errors(data_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="not an opengato checkpoint"):
        load_model(tmp_path / "foreign")
    (tmp_path / "foreign" / "config.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="not an opengato checkpoint config"):
        load_model(tmp_path / "foreign")
    tok = Tokenizer()
    cfg = make_config("gato-1m", tok.vocab_size)
    save_checkpoint(tmp_path / "ck" / "step_1", Gato(cfg), cfg, tok.config, step=1)
    (tmp_path / "ck" / "step_1" / "train_state.pt").unlink()
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        load_train_state(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="does not match this model"):
        run_train(config(data_dir, tmp_path / "ft", init=str(tmp_path / "ck")))
    (tmp_path / "ck" / "step_1" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "ck")


def test_clear_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown model preset 'gato-huge'.*gato-tiny"):
        run_train(config(data_dir, tmp_path, preset="gato-huge"))
    with pytest.raises(KeyError, match="unknown task"):
        run_train(config(data_dir, tmp_path, tasks="classic/NoSuchEnv-v0"))
    with pytest.raises(FileNotFoundError, match="opengato collect"):
        run_train(config(data_dir, tmp_path, tasks="classic/Acrobot-v1"))


def test_lr_schedule():
    cfg = replace(TrainConfig(), lr=1e-4, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    lrs = [cfg.lr * lr_lambda(s, cfg) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-7)
    assert lrs[10] == pytest.approx(1e-4)
    assert lrs[60] == pytest.approx(0.55e-4)
    assert lrs[110] == pytest.approx(1e-5)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))


def test_recipe_sweep_trains_from_a_copied_data_root(data_dir, tmp_path, capsys):
    """benchmarks/recipe_sweep.py: a data root copied with its files' times (`cp -a`) has up to
    date shards, so training there tokenises nothing; the checkpoint is packed with bf16
    weights, unpacked, and loads for evaluation."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recipe_sweep

    small = dict(preset="gato-tiny", tasks=TASKS, context_len=64, batch_size=2, eval_every=0,
                 progress=False)  # fmt: skip
    run_train(TrainConfig(data_dir=str(data_dir), out_dir=str(tmp_path / "a"), steps=1, **small))
    root = tmp_path / "copy"
    shutil.copytree(data_dir, root)  # copy2 keeps the files' times, as `cp -a` does
    capsys.readouterr()
    s = run_train(TrainConfig(data_dir=str(root), out_dir=str(tmp_path / "c"), steps=2,
                              bin_init="smooth", **small))  # fmt: skip
    assert "tokenised" not in capsys.readouterr().out
    recipe_sweep.pack(Path(s["checkpoint"]), tmp_path / "c.tar")
    recipe_sweep.unpack(tmp_path / "c.tar", tmp_path / "unpacked")
    trained, _, _ = load_model(s["checkpoint"])
    back, _, config = load_model(tmp_path / "unpacked")
    assert config["model"]["bin_init"] == "smooth"
    for (name, a), (_, b) in zip(
        trained.state_dict().items(), back.state_dict().items(), strict=True
    ):
        assert b.dtype == torch.float32
        assert torch.equal(a.to(torch.bfloat16).float(), b), name


def test_training_gives_the_callers_torch_generator_back(data_dir, tmp_path):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    run_train(config(data_dir, tmp_path / "run", steps=2, eval_every=0, save_every=0))
    assert torch.equal(torch.random.get_rng_state(), state)


# --------------------------------------------------------------------------- a GPU kept busy
# The paths that keep a GPU busy, checked on the CPU: batches built ahead, no value read back
# from the device in the training forward (so it compiles as one graph), torch.compile and its
# fallback, and speeds counted in real (not padding) tokens.


def _train_metrics(out: Path) -> list[dict]:
    return [m for m in map(json.loads, open(out / "metrics.jsonl")) if "train/loss" in m]


def test_prefetch_changes_nothing_and_speed_counts_real_tokens(data_dir, tmp_path):
    """Without packing some windows end in padding: the run's losses and gradient norms are the
    same with and without prefetching; tokens/s counts only the tokens that are not padding."""
    runs = {n: run_train(config(data_dir, tmp_path / f"p{n}", steps=4, eval_every=0, save_every=0,
                                pack=False, prefetch=n))
            for n in (0, 3)}  # fmt: skip
    assert runs[0]["train_losses"] == runs[3]["train_losses"]
    grad = {n: [m["train/grad_norm"] for m in _train_metrics(tmp_path / f"p{n}")] for n in runs}
    assert grad[0] == grad[3]
    metrics = _train_metrics(tmp_path / "p3")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert any(m["train/pad_fraction"] > 0 for m in metrics)
    for m in metrics:
        real_share = m["train/tokens_per_s"] / m["train/slots_per_s"]
        assert real_share == pytest.approx(1 - m["train/pad_fraction"])
    s = runs[3]
    assert s["tokens_per_s"] < s["slots_per_s"] and s["first_step_s"] > 0
    assert s["compiled"] is False


def test_validation_batches_take_eval_batch_size_rows(data_dir, tmp_path, monkeypatch):
    """--eval-batch-size sets a validation batch's rows (0: the training batch's), and changes
    the validation only: the training losses are the same."""
    import opengato.training.train as train_module

    real, rows = train_module.validation_loss, []  # called (model, sets, cfg, device, rows)
    monkeypatch.setattr(train_module, "validation_loss", lambda *a: rows.append(a[-1]) or real(*a))
    runs = {n: run_train(config(data_dir, tmp_path / f"v{n}", save_every=0, eval_batch_size=n))
            for n in (0, 2)}  # fmt: skip
    assert rows == [4, 4, 4, 2, 2, 2]  # steps 0, 3 and 6 of each run
    assert runs[0]["train_losses"] == runs[2]["train_losses"]
    assert runs[0]["val"]["val/loss"] != runs[2]["val"]["val/loss"]  # other windows
    with pytest.raises(ValueError, match="--eval-batch-size must be >= 0"):
        run_train(config(data_dir, tmp_path / "bad", eval_batch_size=-1))


def test_too_long_observation_is_refused_before_the_forward(data_dir, tmp_path, monkeypatch):
    """The observation-position bound is checked on the host by the prefetch worker (a GPU
    forward never reads it back); the error reaches the caller as it did from the forward."""
    from opengato.training import train

    monkeypatch.setattr(train, "make_config", partial(make_config, max_obs_pos=2))  # CartPole: 4
    with pytest.raises(ValueError, match=r"observation position \d+ >= max_obs_pos=2") as err:
        run_train(config(data_dir, tmp_path / "run", steps=2, eval_every=0))
    assert any("prefetch worker" in note for note in err.value.__notes__)


def test_training_forward_compiles_as_one_graph(data_dir):
    """No graph break in the training forward, with image patches and without: nothing in it
    reads a device value back to the host (the loss positions come from the host, the
    observation-position check is left to the data)."""
    torch.manual_seed(0)
    tok = Tokenizer()
    shards = build_shards(resolve_sources(TASKS), tok, data_dir, data_dir / "shards")
    mix = Mixture(shards, 64, split=Split("all"), pad_id=tok.pad_id, pack=True)
    model = Gato(make_config("gato-tiny", tok.vocab_size, context_len=64)).train()
    batches = [mix.sample_batch(np.random.default_rng(s), 4)[0] for s in range(20)]
    with_images = next(b for b in batches if len(b.patches))
    without = next(b for b in batches if not len(b.patches))
    for batch in (with_images, without):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(lambda b: model(b)[1])(batch)
        assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
        assert explained.graph_count == 1


def _compile_with(monkeypatch, **options) -> None:
    """Make the training loop's torch.compile use `options` (a backend, ...)."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real(model, **options))


@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compiled_steps_match_eager(data_dir, tmp_path, monkeypatch, scope):
    """Three steps through dynamo and AOTAutograd (the `aot_eager` backend: the whole compile
    path but inductor's code generation, which the slow variant below runs) give the eager
    losses; dropout and the patch positions draw from the same generator. Measured: equal.
    Compiling the blocks makes one graph for all of them (4 here), and the validation, which
    calls the model itself, compiles nothing."""
    from torch._dynamo.utils import counters

    eager = run_train(config(data_dir, tmp_path / "eager", steps=3, eval_every=3, save_every=0,
                             preset="gato-1m"))  # fmt: skip
    torch._dynamo.reset()
    counters.clear()
    _compile_with(monkeypatch, backend="aot_eager")
    compiled = run_train(config(data_dir, tmp_path / "compiled", steps=3, eval_every=3,
                                save_every=0, compile=True, compile_scope=scope, preset="gato-1m"))  # fmt: skip
    assert compiled["compiled"] is True
    np.testing.assert_allclose(compiled["train_losses"], eager["train_losses"], rtol=1e-6)
    assert compiled["val"]["val/loss"] == pytest.approx(eager["val"]["val/loss"], rel=1e-6)
    if scope == "blocks":
        assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_inductor_compiled_steps_match_eager(data_dir, tmp_path, monkeypatch):
    """The real `--compile` (inductor, the blocks compiled; 17 s on 2 cores): three steps within
    1e-5 of eager.
    Inductor draws dropout and patch positions with its own generator, so the draws match
    eager's only with `fallback_random` (measured: 1e-6 apart; without it, ~1e-2)."""
    eager = run_train(config(data_dir, tmp_path / "eager", steps=3, eval_every=0, save_every=0))
    torch._dynamo.reset()
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    compiled = run_train(config(data_dir, tmp_path / "compiled", steps=3, eval_every=0,
                                save_every=0, compile=True))  # fmt: skip
    assert compiled["compiled"] is True
    np.testing.assert_allclose(compiled["train_losses"], eager["train_losses"], rtol=1e-5)


@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compile_failure_warns_once_and_trains_eager(data_dir, tmp_path, monkeypatch, scope):
    eager = run_train(config(data_dir, tmp_path / "eager", steps=3, eval_every=0, save_every=0))

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    _compile_with(monkeypatch, backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="--compile.*no compiler here") as warned:
        s = run_train(config(data_dir, tmp_path / "fallback", steps=3, eval_every=0,
                             save_every=0, compile=True, compile_scope=scope))  # fmt: skip
    assert len([w for w in warned if "--compile" in str(w.message)]) == 1
    assert s["compiled"] is False and s["train_losses"] == eager["train_losses"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_forward_never_waits_for_the_gpu(data_dir):
    """CUDA's sync debug mode makes any wait for the device an error: the training forward,
    with image patches, reads nothing back once its batch is on the GPU."""
    device = torch.device("cuda")
    tok = Tokenizer()
    shards = build_shards(resolve_sources(TASKS), tok, data_dir, data_dir / "shards")
    mix = Mixture(shards, 64, split=Split("all"), pad_id=tok.pad_id, pack=True)
    model = Gato(make_config("gato-tiny", tok.vocab_size, context_len=64)).to(device).train()
    batches = (mix.sample_batch(np.random.default_rng(s), 4)[0] for s in range(20))
    batch = next(b for b in batches if len(b.patches)).to(device)
    model(batch)  # the first call initialises CUDA libraries
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss)


def test_tokenising_in_worker_processes_writes_the_same_shards(data_dir, tmp_path):
    """Stale shards tokenised in 2 processes hold the same arrays and meta as shards tokenised
    in this one; a second build finds them all current and tokenises nothing."""
    tok = Tokenizer()
    serial = build_shards(resolve_sources(TASKS), tok, data_dir, tmp_path / "serial")
    notes: list[str] = []
    parallel = build_shards(resolve_sources(TASKS), tok, data_dir, tmp_path / "parallel",
                            log=notes.append, workers=2)  # fmt: skip
    assert any(n.endswith("2 at a time") for n in notes), notes
    for a, b in zip(serial, parallel, strict=True):
        assert a.name == b.name
        meta_a, meta_b = (json.loads((s.path / "meta.json").read_text()) for s in (a, b))
        assert meta_a.pop("created") and meta_b.pop("created")  # when it was written
        assert meta_a == meta_b
        for f in sorted(a.path.glob("*.npy")):
            assert np.array_equal(np.load(f), np.load(b.path / f.name)), f.name
    notes.clear()
    build_shards(resolve_sources(TASKS), tok, data_dir, tmp_path / "parallel", log=notes.append,
                 workers=2)  # fmt: skip
    assert notes == []
