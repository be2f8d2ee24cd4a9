"""The wall-clock budget of `opengato demo --budget-minutes` (`apply_budget`): a few steps of
the real training run and thrown away to measure tokens/s (`calibrate`), and the most steps that
fit in the time left (`plan_steps`); and the demo's tokenising: in the collection's workers as
each dataset is written (`tokenize_job`), then whatever is left (`tokenize`)."""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from opengato.training.config import TrainConfig

Demo = TypeVar("Demo")
"""An opengato.demo.DemoConfig (or SuiteConfig); not imported, as opengato.demo imports this."""

# --------------------------------------------------------------------------- validation


def eval_every(steps: int) -> int:
    """The demo validates 4 times a run (and at step 0 and the last step)."""
    return max(steps // 4, 1)


def validation_passes(steps: int) -> int:
    """How many times a demo run of `steps` steps validates: at step 0, every `eval_every`
    steps, and at the last step.

    >>> [validation_passes(n) for n in (1, 6, 19, 20, 1750)]
    [2, 7, 6, 5, 6]
    """
    every = eval_every(steps)
    return 1 + steps // every + (steps % every != 0)


# --------------------------------------------------------------------------- tokenising


def shard_dir(train: TrainConfig) -> tuple[Path, Path]:
    """(data root, token shard folder) of `train`."""
    from opengato.data.root import data_root

    root = data_root(train.data_dir)
    return root, Path(train.shard_dir) if train.shard_dir else root / "shards"


def tokenize_job(train: TrainConfig) -> Callable[[str], tuple[str, list[str], int]]:
    """The job that tokenises one of `train`'s datasets (`batches.sources.shard_job`), for the
    collection's pool to run as each dataset is written (`run_collect(after=...)`)."""
    from opengato.batches.sources import shard_job

    return shard_job(train.tokenizer, *shard_dir(train))


def tokenize(train: TrainConfig, collected: dict) -> None:
    """Build the token shards of `train`'s datasets (batches/sources.py) that the collection
    (`collected`, what `run_collect` returned) did not, `--tokenize-workers` at a time, before
    the budget's calibration run times training; training then finds them up to date. The
    suite's 160 datasets hold a few hundred million tokens: ~24 s on 14 cores after the
    collection, when it tokenised none (an H100 lease's machine, benchmarks/RESULTS.md)."""
    from opengato.batches.sources import build_shards, pass_on_notes, resolve_sources
    from opengato.tokens.tokenizer import Tokenizer

    done = collected.get("after", {}).values()  # (name, log lines, tokens) of each
    built = [n for _, notes, n in done if pass_on_notes(notes, print)]
    if built:
        print(f"tokenised {len(built)} datasets ({sum(built):,} tokens) in the collection's "
              f"workers, each as it was written")  # fmt: skip
    build_shards(resolve_sources(train.tasks), Tokenizer(train.tokenizer), *shard_dir(train),
                 workers=train.tokenize_workers)  # fmt: skip


# --------------------------------------------------------------------------- the budget

VALIDATION_BATCH_COST = 0.5
"""Time of one validation batch as a share of a training step's: a forward pass without
backward or optimizer is about a third of the FLOPs; rounded up for the overheads that do not
shrink with it (kernel launches, batch assembly)."""


def calibrate(train: TrainConfig, steps: int, folder: Path) -> dict:
    """Run `steps` steps of `train` (its model, data, batch, device, dtype, compilation) in
    `folder`, then delete the folder. Returns `tokens_per_s`, the speed over the second half of
    the steps, where allocation, compilation and autotuning are done (tokens are batch x
    context slots, padding included, as a step's cost); `startup_s`, the run's time less
    `steps - 1` steps at that speed (data, model, device, the slower first steps, saving); and
    `wall_s`. Its output goes to `folder`.log."""
    import json

    from opengato.training.train import run_train

    if steps < 3:
        raise ValueError(f"--budget-calibration-steps must be >= 3 (the speed is timed over "
                         f"the second half), got {steps}")  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    half = math.ceil(steps / 2)  # the loop records the speed of each `log_every` steps
    probe = replace(train, out_dir=str(folder), steps=steps, eval_every=0, save_every=0,
                    log_every=half, progress=False, resume=False)  # fmt: skip
    t = time.perf_counter()
    with open(f"{folder}.log", "w") as log, contextlib.redirect_stdout(log):
        result = run_train(probe)
    wall = time.perf_counter() - t
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r.get("step") == steps and "train/loss" in r][-1]
    shutil.rmtree(folder, ignore_errors=True)
    tokens_per_s = (last.get("train/slots_per_s") or last.get("train/tokens_per_s")
                    or result.get("slots_per_s") or result["tokens_per_s"])  # fmt: skip
    step_s = train.batch_size * train.context_len / tokens_per_s
    return {"steps": steps, "timed_steps": steps - half, "tokens_per_s": tokens_per_s,
            "wall_s": wall, "startup_s": max(wall - (steps - 1) * step_s, 0.0),
            "device": result["device"]}  # fmt: skip


def plan_steps(
    left_s: float,
    *,
    eval_s: float,
    margin: float,
    tokens_per_s: float,
    tokens_per_step: int,
    startup_s: float,
    val_batches: float,
) -> dict:
    """The most training steps that fit in `left_s` seconds: keep `eval_s` for evaluation and
    the report and a `margin` share of the rest, take off the run's start-up, then fit the
    steps (`tokens_per_step` tokens at `tokens_per_s`) and their validation passes
    (`validation_passes`, each of `val_batches` batches, counted in training batches' rows,
    that cost VALIDATION_BATCH_COST of a step) in what remains. Returns the plan; `steps` 0:
    no time to train.

    >>> plan_steps(600, eval_s=100, margin=0.1, tokens_per_s=1000, tokens_per_step=1000,
    ...            startup_s=20, val_batches=10)["steps"]  # 404 s of steps + 5 passes x 5 s
    404
    """
    step_s = tokens_per_step / tokens_per_s
    pass_s = val_batches * VALIDATION_BATCH_COST * step_s
    train_s = (left_s - eval_s) * (1.0 - margin) - startup_s
    steps = max(math.floor(train_s / step_s), 0)
    while steps > 0 and steps * step_s + validation_passes(steps) * pass_s > train_s:
        steps -= 1  # a few hundred times at most: a pass costs val_batches / 2 steps
    return {"left_s": left_s, "eval_s": eval_s, "margin": margin, "tokens_per_s": tokens_per_s,
            "tokens_per_step": tokens_per_step, "startup_s": startup_s, "step_s": step_s,
            "train_s": train_s, "validation_s": validation_passes(max(steps, 1)) * pass_s,
            "steps": steps}  # fmt: skip


LANGUAGE_AND_REPORT_S = 30.0
"""Seconds of a budget kept after the control tasks' episodes for the captions, the answers and
the report (on the 2-core CPU the demo's model took ~1 s for 200 captions, ~5 s for 209 held-out
questions, now 128, and a few for the report)."""


def eval_minutes_left(cfg: Demo, start: float) -> float:
    """The evaluation's `--max-minutes` under `--budget-minutes`: what the budget (counted from
    `start`, a time.perf_counter()) leaves now, less LANGUAGE_AND_REPORT_S, and at least a
    quarter of a minute (when training ran over, the evaluation still plays something)."""
    left_s = cfg.budget_minutes * 60 - (time.perf_counter() - start) - LANGUAGE_AND_REPORT_S
    return round(max(left_s / 60, 0.25), 2)


def apply_budget(cfg: Demo, train: TrainConfig, start: float) -> tuple[Demo, dict]:
    """`cfg` with the training steps that fit in its budget (`--budget-minutes`, counted from
    `start`, a time.perf_counter()), measured by `calibrate` on `train` (its resolved training
    stage); the warm-up is capped at a tenth of the run. Prints the decision and returns it."""
    from opengato.batches.sources import resolve_sources

    if train.resume:
        raise ValueError("--budget-minutes sets the steps of a new run; to --train.resume one, "
                         "give its --train.steps")  # fmt: skip
    budget_s = cfg.budget_minutes * 60
    calib = calibrate(train, cfg.budget_calibration_steps, Path(cfg.out_dir) / "calibration")
    spent = time.perf_counter() - start
    # A validation batch of fewer rows than a training batch costs that much less.
    rows = (train.eval_batch_size or train.batch_size) / train.batch_size
    val_batches = len(resolve_sources(train.tasks)) * train.eval_batches * rows
    plan = plan_steps(budget_s - spent, eval_s=cfg.budget_eval_minutes * 60,
                      margin=cfg.budget_margin, tokens_per_s=calib["tokens_per_s"],
                      tokens_per_step=train.batch_size * train.context_len,
                      startup_s=calib["startup_s"], val_batches=val_batches)  # fmt: skip
    plan.update(budget_s=budget_s, spent_s=spent, calibration=calib)
    print(
        f"budget: {cfg.budget_minutes:g} min; {spent / 60:.1f} min spent (collection, "
        f"tokenising, calibration {calib['wall_s']:.0f} s); {cfg.budget_eval_minutes:g} min "
        f"kept for evaluation and the report, and a {cfg.budget_margin:.0%} margin"
    )
    print(
        f"calibration: {train.preset}, {train.batch_size} x {train.context_len} tokens a step, "
        f"{train.dtype} on {calib['device']}: {calib['tokens_per_s']:,.0f} tokens/s over its "
        f"last {calib['timed_steps']} of {calib['steps']} steps ({plan['step_s']:.3f} s a "
        f"step); start-up {calib['startup_s']:.1f} s; validation ~{plan['validation_s']:.1f} s "
        f"({validation_passes(max(plan['steps'], 1))} passes x {val_batches:g} batches of "
        f"{train.batch_size} rows)"
    )
    steps = plan["steps"]
    if steps < cfg.budget_min_steps:  # a slow collection: train the floor, evaluate less
        print(f"=> the budget leaves {steps} steps: training --budget-min-steps "
              f"{cfg.budget_min_steps} instead, and evaluating in what is left")  # fmt: skip
        steps = plan["steps"] = cfg.budget_min_steps
    if steps < 1:
        raise ValueError(
            f"--budget-minutes {cfg.budget_minutes:g} leaves no time to train: "
            f"{spent / 60:.1f} min spent, {cfg.budget_eval_minutes:g} kept for evaluation, "
            f"{calib['startup_s']:.0f} s start-up and {plan['validation_s']:.0f} s validation. "
            f"The data and token shards are kept: the same command again skips collecting "
            f"and tokenising them"
        )
    warmup = min(train.warmup_steps, steps // 10)
    plan["warmup_steps"] = warmup
    print(
        f"=> --train.steps {steps:,} ({steps * plan['tokens_per_step']:,} tokens, "
        f"~{steps * plan['step_s'] / 60:.1f} min), warm-up {warmup} steps"
    )
    return replace(cfg, train=replace(cfg.train, steps=steps, warmup_steps=warmup)), plan
