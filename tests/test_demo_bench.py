"""`opengato demo` end to end at toy scale, and the benchmark cases and tables."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from opengato import bench
from opengato.bench import BenchConfig, act_case, data_case, gemm_case, train_case
from opengato.bench_tables import to_markdown
from opengato.demo import DemoConfig, SuiteConfig, run_demo, stage_configs
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
        record=150, captions=True, qa=True,
    )  # fmt: skip
    # The demo's --tasks feeds every stage; weights of domains it leaves out are dropped.
    small = replace(DemoConfig(), tasks="classic/CartPole-v1,text/qa",
                    train=replace(DemoConfig().train, steps=10, seed=3))  # fmt: skip
    collect, train, evaluate = stage_configs(small)
    assert collect.tasks == train.tasks == "classic/CartPole-v1,text/qa"
    assert evaluate.tasks == ["classic/CartPole-v1"]
    assert evaluate.qa and not evaluate.captions  # held-out questions in the mix, no scenes
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
    # tokens/s counts the real tokens (MFU is computed from them), slots/s every position
    assert t["tokens_per_s"] == pytest.approx(t["slots_per_s"] * (1 - t["pad_fraction"]))
    real_compile = torch.compile
    with pytest.MonkeyPatch.context() as mp:  # the compiled cases, without inductor's codegen
        mp.setattr(torch, "compile", lambda m, **kw: real_compile(m, backend="aot_eager"))
        tc = train_case(cfg, "gato-tiny", "fp32", compile=True)
        ac = act_case(cfg, 1, True, "bf16", "compiled")
    assert (
        tc["compile"]
        and tc["compile_scope"] == "blocks"
        and tc["steps"] == 2
        and tc["warmup_s"] > 0
    )
    assert ac["weights"] == "compiled" and ac["compile_s"] > 0 and ac["repeats"] == 2
    for cache, weights in ((True, "packed"), (True, "plain"), (False, "packed"), (True, "int8")):
        a = act_case(cfg, 3, cache, "bf16", weights)  # asserts the actions are in the space
        assert a["env_steps_per_s"] == pytest.approx(3 * a["steps_per_s"])
        assert a["repeats"] == 2 and a["weights"] == weights
        assert a["dtype"] == ("fp32" if weights == "int8" else "bf16")
    d = data_case(cfg, seconds=0.2)
    assert d["batches_per_s"] > 0
    res = {"date": "d", "commit": "c", "command": "opengato bench", "machine":
           {"cpu": "x", "cores": 2, "torch": "t", "torch_threads": 2, "python": "3.11"},
           "gemm": [{**g, "peak_rss_mb": 1.0}],
           "train": [{**t, "peak_rss_mb": 1.0}, {**tc, "peak_rss_mb": 1.0}],
           "act": [{**a, "peak_rss_mb": 1.0}], "data": {**d, "peak_rss_mb": 1.0}}  # fmt: skip
    md = to_markdown(res)
    mfu = 100 * 6 * t["non_embedding_params"] * t["tokens_per_s"] / (g["gflops"] * 1e9)
    assert f"{mfu:.1f}%" in md
    assert "| gato-tiny | 0.5M | 0.1M | fp32 | blocks | 2 x 64 |" in md  # the compiled row
    assert f"{d['batches_per_s'] / t['steps_per_s']:,.0f}x" in md
    assert np.isfinite(mfu)


def test_a_compiled_case_times_no_compilation():
    """The timed window of a compiled training case opens after 3 warm-up steps in a row that
    compiled nothing, and starts again after a step that compiles (a kind of batch the warm-up
    never drew: the first H100 lease timed 3 steps, one of them compiling, in 28 s)."""
    syncs = []
    window = bench._Window(compile=True, warmup_steps=2, sync=lambda: syncs.append(1))
    for new_graph in (True, True, False, False, False):  # graphs, then 3 quiet steps
        assert window.warming
        window.step(new_graph, 100)
    assert not window.warming and window.warmup == 5 and syncs == [1]
    window.step(False, 100)
    window.step(True, 100)  # a batch with images, compiled while timed
    assert (window.timed, window.real, window.restarts, window.warmup) == (0, 0, 1, 7)
    window.step(False, 100)
    assert (window.timed, window.real, len(syncs)) == (1, 100, 2)
    for _ in range(3):  # at most 3 restarts: then a compile is timed, and counted
        window.step(True, 100)
    assert window.restarts == 3 and window.timed == 1
    eager = bench._Window(compile=False, warmup_steps=2, sync=lambda: None)
    eager.step(True, 1), eager.step(True, 1), eager.step(True, 1)
    assert (eager.warmup, eager.timed, eager.restarts) == (2, 1, 0)


def test_suite_recipe_covers_every_builtin_task(tmp_path, capsys):
    """`opengato suite` is the demo's machinery with a second recipe: every state-based control
    task but the held-out split (no pixel twins) and every corpus, more demonstrations where experts are cheap, held-out
    seeds, and the stage configs resolved by the same `stage_configs`."""
    from opengato.cli import main
    from opengato.data.collect import episode_counts
    from opengato.seeds import EVAL_SEED_START, RANDOM_SEED_START
    from opengato.tasks import HELDOUT_TASKS, list_tasks

    collect, train, evaluate = stage_configs(SuiteConfig(out_dir=str(tmp_path / "s")))
    domains = ["babyai", "metaworld", "classic", "mujoco", "dmc", "minatar"]
    every = {t for d in domains for t in list_tasks(d)}
    assert len(list_tasks("babyai")) == 90 and len(list_tasks("metaworld")) == 50
    assert set(evaluate.tasks) == every - set(HELDOUT_TASKS)
    assert len(evaluate.tasks) == len(every) - len(set(HELDOUT_TASKS) & every)
    assert select(train.tasks)[1] == ["text/python-docs", "text/qa", "vision/scenes",
                                      "vision/photos"]  # fmt: skip
    counts = episode_counts(collect, evaluate.tasks)
    assert {counts[t] for t in evaluate.tasks if t.startswith("babyai/")} == {300, 100}
    assert counts["babyai/UnlockToUnlock"] == 100  # the bot loops on half its seeds
    assert {counts[t] for t in evaluate.tasks if not t.startswith("babyai/")} == {200}
    assert collect.seed + max(counts.values()) <= RANDOM_SEED_START
    assert collect.random_episodes == 100  # the reference scores' minimum (docs/evaluation.md)
    assert evaluate.start_seed == EVAL_SEED_START and evaluate.device == "cpu"  # auto, no GPU
    assert train.preset == "gato-20m" and train.eval_every == train.steps // 4
    assert train.eval_batches == 1 and train.eval_batch_size == 16  # 160 datasets a pass
    assert all(w.split("=")[0] in (*domains, "text", "qa", "captions")
               for w in train.weights.split(","))  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main(["suite", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--budget-minutes", "--budget-eval-minutes", "--collect.episodes-per-domain",
                 "gato-20m", "babyai=300"):  # fmt: skip
        assert flag in text, flag


def test_plan_steps_fits_training_and_validation_in_the_time_left():
    from opengato.budget import plan_steps, validation_passes

    plan = plan_steps(900, eval_s=180, margin=0.05, tokens_per_s=500_000,
                      tokens_per_step=64 * 1024, startup_s=15, val_batches=151)  # fmt: skip
    train_s = (900 - 180) * 0.95 - 15
    steps = plan["steps"]

    def used(n: int) -> float:  # steps and their validation passes (151 batches of half a step)
        return (n + validation_passes(n) * 151 * 0.5) * plan["step_s"]

    assert steps > 0 and used(steps) <= train_s < used(steps + 1)  # the most steps that fit
    assert plan_steps(100, eval_s=120, margin=0.05, tokens_per_s=1e6, tokens_per_step=1000,
                      startup_s=0, val_batches=1)["steps"] == 0  # fmt: skip


def test_the_evaluation_gets_what_the_budget_leaves():
    from opengato.budget import LANGUAGE_AND_REPORT_S, eval_minutes_left

    cfg = SuiteConfig(budget_minutes=10)
    left = eval_minutes_left(cfg, time.perf_counter() - 60)  # a minute spent
    assert left == pytest.approx((600 - 60 - LANGUAGE_AND_REPORT_S) / 60, abs=0.01)
    assert eval_minutes_left(cfg, time.perf_counter() - 3600) == 0.25  # over: still a little


def test_budget_sets_the_steps_from_measured_throughput(tmp_path, monkeypatch, capsys):
    """--budget-minutes: a real calibration at toy scale measures tokens/s (its run is deleted),
    the steps that fit replace --train.steps, and the learning-rate schedule ends at them. The
    plan uses a fixed speed here, so that the toy run stays a few steps on any machine."""
    import opengato.budget as budget

    measured = {}

    def calibrate(train, steps, folder):
        measured.update(real_calibrate(train, steps, folder))
        assert not folder.exists()
        return {**measured, "tokens_per_s": 2560.0, "startup_s": 0.0}  # 0.1 s a step

    real_calibrate = budget.calibrate
    monkeypatch.setattr(budget, "calibrate", calibrate)
    cfg = toy_demo(tmp_path, "budget")
    cfg = replace(cfg, budget_minutes=1.5, budget_eval_minutes=1.3, budget_calibration_steps=4,
                  collect=replace(cfg.collect, workers=2),
                  train=replace(cfg.train, steps=10_000, warmup_steps=500))  # fmt: skip
    out = run_demo(cfg)
    plan = out["budget"]
    steps = plan["steps"]
    assert measured["tokens_per_s"] > 0 and measured["timed_steps"] == 2  # of 4: the second half
    assert 1 <= steps <= 120 and plan["warmup_steps"] == steps // 10
    assert out["train"]["steps"] == steps == len(out["train"]["train_losses"])
    printed = capsys.readouterr().out
    assert "calibration: gato-tiny, 4 x 64 tokens a step" in printed
    assert "tokens/s over its last 2 of 4 steps" in printed
    assert f"=> --train.steps {steps:,} " in printed and "of a 1.5-min budget" in printed
    # The budget bounds the episodes too: what it leaves after training, less the language's.
    assert 0.25 <= out["results"]["config"]["max_minutes"] < 1.5
    assert "the control tasks' episodes get" in printed and "unfinished" not in out["results"]
    written = json.loads((tmp_path / "budget" / "demo_config.json").read_text())
    assert written["train"]["steps"] == steps and written["budget"]["steps"] == steps
    assert written["train"]["eval_every"] == max(steps // 4, 1)
    metrics = [json.loads(line) for line in
               (tmp_path / "budget" / "train" / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    last_lr = [m["train/lr"] for m in metrics if "train/lr" in m][-1]
    assert last_lr == pytest.approx(cfg.train.lr * cfg.train.min_lr_ratio)  # cosine ends there
    # A budget that leaves no time to train says so before training.
    monkeypatch.setattr(budget, "calibrate", lambda *a: {**measured, "tokens_per_s": 2560.0})
    train = stage_configs(cfg)[1]
    with pytest.raises(ValueError, match="leaves no time to train"):
        budget.apply_budget(replace(cfg, budget_minutes=1.0), train, time.perf_counter())
    # unless a floor is set: it trains that many steps, and evaluation gets what is left
    floored, plan = budget.apply_budget(replace(cfg, budget_minutes=1.0, budget_min_steps=7),
                                        train, time.perf_counter())  # fmt: skip
    assert floored.train.steps == plan["steps"] == 7


def test_summary_prints_the_language_scores_or_why_not():
    """`opengato eval`'s and the demo's summary: caption and answer scores, or the reason one was
    not scored."""
    from test_report import fake_results

    from opengato.demo import summary_table

    results = fake_results(0.0)
    results["qa"] = {"error": "/d/text/qa.parquet is missing; run `opengato collect --tasks text`"}
    text = summary_table(results)
    assert "captions: bleu1 0.500, bleu2 0.400" in text and "token_f1 0.600" in text
    assert "answers to held-out questions: not scored (/d/text/qa.parquet is missing" in text
