"""`opengato demo` end to end at toy scale, and the benchmark cases and tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from opengato.bench import BenchConfig, act_case, data_case, gemm_case, to_markdown, train_case
from opengato.demo import DemoConfig, run_demo


def toy_demo(tmp: Path, out: str) -> DemoConfig:
    return DemoConfig(
        tasks="classic/CartPole-v1,text/qa", out_dir=str(tmp / out), data_dir=str(tmp / "data"),
        episodes=3, preset="gato-tiny", steps=4, batch_size=4, context_len=64, warmup_steps=1,
        eval_episodes=2, num_envs=2, record=5, captions=False, workers=1, progress=False,
    )  # fmt: skip


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
    from opengato.data import corpora, datasets

    datasets.run_collect(datasets.CollectConfig(tasks="classic/CartPole-v1", episodes=2,
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
