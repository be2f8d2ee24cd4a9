"""`opengato demo` end to end at toy scale, and the benchmark cases and tables."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from opengato.bench import BenchConfig, act_case, data_case, gemm_case, to_markdown, train_case
from opengato.demo import DemoConfig, run_demo, stage_configs
from opengato.tasks import select


def toy_demo(tmp: Path, out: str) -> DemoConfig:
    recipe = DemoConfig()
    return DemoConfig(
        tasks="classic/CartPole-v1,text/qa", out_dir=str(tmp / out), data_dir=str(tmp / "data"),
        collect=replace(recipe.collect, episodes=3, workers=1),
        train=replace(recipe.train, preset="gato-tiny", steps=4, batch_size=4, context_len=64,
                      warmup_steps=1, progress=False),
        eval=replace(recipe.eval, episodes=2, num_envs=2, record=5, captions=False, workers=1),
    )  # fmt: skip


def test_demo_recipe_resolves_to_the_verbs_configs(tmp_path):
    """The demo runs each stage with its verb's own config: the recipe, with the datasets, the
    data root and the output paths filled in from the demo's own options."""
    from opengato.agent.eval_config import EvalConfig
    from opengato.data.collect import CollectConfig
    from opengato.training.config import TrainConfig

    out = tmp_path / "demo"
    collect, train, evaluate = stage_configs(DemoConfig(out_dir=str(out), data_dir="D"))
    assert collect == CollectConfig(tasks="default", episodes=100, seed=0, data_dir="D", workers=2)
    assert train == TrainConfig(
        preset="gato-1m", tasks="default", data_dir="D", out_dir=str(out / "train"), steps=1750,
        batch_size=16, context_len=512, lr=1e-3, warmup_steps=50, seed=0, eval_every=437,
        save_every=0, dtype="bf16", dropout=0.0, bin_init="normal", progress=True,
        weights="babyai=2,metaworld=0.5,text=0.1,qa=0.05,captions=0.1",
    )  # fmt: skip
    assert evaluate == EvalConfig(
        checkpoint=str(out / "train"), tasks=select("default")[0], episodes=50,
        start_seed=1_000_000, num_envs=10, workers=2, data_dir="D", out=str(out / "eval.json"),
        record=150, captions=True,
    )  # fmt: skip
    # The demo's --tasks feeds every stage; weights of domains it leaves out are dropped.
    small = replace(DemoConfig(), tasks="classic/CartPole-v1,text/qa",
                    train=replace(DemoConfig().train, steps=10, seed=3))  # fmt: skip
    collect, train, evaluate = stage_configs(small)
    assert collect.tasks == train.tasks == "classic/CartPole-v1,text/qa"
    assert evaluate.tasks == ["classic/CartPole-v1"]
    assert train.weights == "qa=0.05" and train.eval_every == 2 and train.seed == 3


def test_demo_help_shows_the_nested_options(capsys):
    from opengato.cli import main

    with pytest.raises(SystemExit) as done:
        main(["demo", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--tasks", "--out-dir", "--data-dir", "--collect.episodes", "--train.lr",
                 "--train.steps", "--train.seed", "--eval.episodes", "--eval.num-envs"):  # fmt: skip
        assert flag in text, flag
    # What the demo fills in itself is not an option (it would contradict --tasks and --out-dir).
    for hidden in ("--train.tasks", "--train.out-dir", "--train.eval-every", "--collect.tasks",
                   "--eval.tasks", "--eval.out ", "--eval.data-dir", "CHECKPOINT"):  # fmt: skip
        assert hidden not in text, hidden


def test_demo_runs_end_to_end_and_repeats_exactly(tmp_path, capsys):
    a = run_demo(toy_demo(tmp_path, "a"))
    report = Path(a["report"])
    assert report.exists() and report.read_text().strip()
    assert (report.parent / "figure5.png").exists()
    cart = a["results"]["tasks"]["classic/CartPole-v1"]
    assert len(cart["episodes"]) == 2 and cart["normalized_score"] is not None
    printed = capsys.readouterr().out
    assert "classic/CartPole-v1" in printed and f"report: {report}" in printed
    # The same seed again (data now on disk, so collection is skipped): the same numbers.
    b = run_demo(toy_demo(tmp_path, "b"))
    assert b["train"]["train_losses"] == a["train"]["train_losses"]
    ra, rb = (json.loads(Path(x["report"]).parent.parent.joinpath("eval.json").read_text())
              for x in (a, b))  # fmt: skip
    assert (
        ra["tasks"]["classic/CartPole-v1"]["episodes"]
        == rb["tasks"]["classic/CartPole-v1"]["episodes"]
    )


def test_demo_rejects_tasks_without_control(tmp_path):
    cfg = toy_demo(tmp_path, "c")
    cfg.tasks = "text/qa"
    with pytest.raises(ValueError, match="no control task"):
        run_demo(cfg)


def test_bench_cases_at_toy_scale(tmp_path):
    from opengato.data import collect, corpora

    collect.run_collect(collect.CollectConfig(tasks="classic/CartPole-v1", episodes=2,
                                              random_episodes=2, data_dir=str(tmp_path), workers=1))  # fmt: skip
    corpora.build_text_corpus(tmp_path)
    cfg = BenchConfig(tasks="classic/CartPole-v1,text/qa", data_dir=str(tmp_path), context_len=64,
                      batch_size=2, seconds=0.0, min_steps=2, act_preset="gato-tiny", act_steps=2)  # fmt: skip
    g = gemm_case("fp32", n=128, reps=2)
    assert g["gflops"] > 0
    t = train_case(cfg, "gato-tiny", "fp32")
    assert t["steps"] == 2 and t["tokens_per_s"] > 0 and t["non_embedding_params"] < t["params"]
    for cache in (True, False):
        a = act_case(cfg, 3, cache, "fp32")  # asserts the actions are in the action space
        assert a["env_steps_per_s"] == pytest.approx(3 * a["steps_per_s"])
    d = data_case(cfg, seconds=0.2)
    assert d["batches_per_s"] > 0
    res = {"date": "d", "commit": "c", "command": "opengato bench", "machine":
           {"cpu": "x", "cores": 2, "torch": "t", "torch_threads": 2, "python": "3.11"},
           "gemm": [{**g, "peak_rss_mb": 1.0}], "train": [{**t, "peak_rss_mb": 1.0}],
           "act": [{**a, "peak_rss_mb": 1.0}], "data": {**d, "peak_rss_mb": 1.0}}  # fmt: skip
    md = to_markdown(res)
    mfu = 100 * 6 * t["non_embedding_params"] * t["tokens_per_s"] / (g["gflops"] * 1e9)
    assert f"{mfu:.1f}%" in md
    assert f"{d['batches_per_s'] / t['steps_per_s']:,.0f}x" in md
    assert np.isfinite(mfu)
