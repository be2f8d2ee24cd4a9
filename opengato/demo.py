"""`opengato demo` and `opengato suite`: the main job, end to end, on the built-in tasks.

    opengato demo                                   # ~30 min on 2 CPU cores (README)
    opengato demo --tasks 'default,metaworld/push-v3' --train.preset gato-5m --train.steps 4000
    opengato suite --budget-minutes 8               # all 147 control tasks + corpora, on a GPU

`opengato suite` is the same job with a second recipe (`SuiteConfig`: the same fields, other
defaults): every built-in control task (opengato.tasks.SUITE), more demonstrations where the
experts are cheap, a bigger model and batch, and a shorter evaluation sized for a GPU machine.

Four stages, each the same code the separate verbs run (nothing is re-implemented here), each
configured by that verb's own config, nested here with the demo's recipe as its defaults:

1. collect   expert demonstrations for every task + text and image-caption corpora
             (opengato.data.collect.run_collect, `--collect.*`; resumable, skipped when
             already on disk);
2. train     one small Gato on all of them at once (opengato.training.train.run_train,
             `--train.*`);
3. eval      roll the single set of weights out on every control task, expert-normalised
             (opengato.agent.evaluate.run_eval, `--eval.*`), plus captions of held-out scenes;
4. report    Markdown/HTML with Figure 5, per-domain bars and rollout GIFs (opengato.report).

The demo's own options are what ties the stages together: `--tasks` and `--data-dir` (collection
collects those datasets into that root, training trains on them, evaluation rolls out their
control tasks and prompts with their demonstrations) and `--out-dir` (training's run folder
`train/`, the results `eval.json`, the `report/`). `stage_configs` shows each stage's resolved
config; the fields the demo fills in are hidden from its command line.

Evaluation follows the paper's protocol: 50 rollouts per task, each from a start state that no
demonstration used (opengato/seeds.py).

`--budget-minutes` sets the number of training steps from the wall clock instead of
`--train.steps`: after collection, a few steps of the real training (model, data, device) are
run and thrown away to measure tokens/s (`calibrate`), and the run gets as many steps as fit in
what is left, less `--budget-eval-minutes` for evaluation and the report and a
`--budget-margin` share (`plan_steps`); the learning-rate schedule follows those steps.

Training is seeded by `--train.seed`: the same seed on the same machine gives the same numbers.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from tyro.conf import Suppress

from opengato.agent.eval_config import EvalConfig
from opengato.data.collect import CollectConfig
from opengato.files import atomic_write_json
from opengato.seeds import COLLECT_SEED_START, EVAL_SEED_START
from opengato.tasks import SUITE
from opengato.training.config import TrainConfig

# The stages' configs as the demo's command line shows them: the verbs' own, less the fields the
# demo fills in itself, so that `--train.tasks` cannot contradict `--tasks`. Their values here
# are placeholders: `stage_configs` sets them from the demo's own options.


@dataclass
class DemoCollectConfig(CollectConfig):
    """Collection (`opengato collect`'s options): of `--tasks`, into `--data-dir`."""

    tasks: Suppress[str] = "default"
    data_dir: Suppress[str | None] = None


@dataclass
class DemoTrainConfig(TrainConfig):
    """Training (`opengato train`'s options): on `--tasks` from `--data-dir`, into
    `<out-dir>/train`, validating 4 times a run."""

    tasks: Suppress[str] = "default"
    data_dir: Suppress[str | None] = None
    out_dir: Suppress[str] = "runs/demo/train"
    eval_every: Suppress[int] = 1


@dataclass
class DemoEvalConfig(EvalConfig):
    """Evaluation (`opengato eval`'s options): of the trained checkpoint, on the control tasks of
    `--tasks`, prompted from `--data-dir`, into `<out-dir>/eval.json`."""

    checkpoint: Suppress[str] = ""
    tasks: Suppress[list[str]] = field(default_factory=list)
    data_dir: Suppress[str | None] = None
    out: Suppress[str] = "runs/demo/eval.json"


@dataclass
class DemoConfig:
    """Collect demonstrations, train one Gato on all default tasks, evaluate it, write a report."""

    tasks: str = "default"
    """Datasets to collect, train on and evaluate (the `opengato train --tasks` syntax): `default`
    is opengato.tasks.DEFAULT_TASKS (4 BabyAI levels, 4 Meta-World tasks, 4 classic-control
    tasks) plus the text and image-caption corpora. Add suites or globs to scale up, e.g.
    `default,metaworld/*`."""
    out_dir: str = "runs/demo"
    """Folder for the run: `train/` (checkpoints, TensorBoard), `eval.json`, `report/`."""
    data_dir: str | None = None
    """Data root for demonstrations and corpora; default `$OPENGATO_DATA` or `~/.opengato/data`."""
    collect: DemoCollectConfig = field(
        default_factory=lambda: DemoCollectConfig(episodes=100, seed=COLLECT_SEED_START, workers=2)
    )
    """100 expert demonstrations per control task, from seed 0 on whatever the training seed."""
    train: DemoTrainConfig = field(
        default_factory=lambda: DemoTrainConfig(
            preset="gato-1m",
            steps=1750,
            batch_size=16,
            context_len=512,
            lr=1e-3,
            warmup_steps=50,
            save_every=0,
            dtype="bf16",
            dropout=0.0,
            weights="babyai=2,metaworld=0.5,text=0.1,qa=0.05,captions=0.1",
        )  # fmt: skip
    )
    """The demo's recipe, chosen by measurement (benchmarks/recipe_sweep.py,
    docs/recipe-sweep.md). gato-1m trains 2.4x more tokens per minute than gato-5m on 2 CPU
    cores and at equal time matched or beat it; 1750 steps x 16 x 512 = 14.3M tokens, ~17 min on
    2 cores; lr 1e-3 suits small presets on short runs (the paper: 1e-4); bf16 autocast is
    1.1-1.7x faster on CPUs with AVX512-BF16 (benchmarks/RESULTS.md); no dropout, since a small
    model trained for minutes underfits. Weights: BabyAI is the suite still improving at this
    budget, Meta-World needs 4-16x more training whatever its share, and text and captions stay
    in the mix but light (weights of domains that `--tasks` leaves out are dropped)."""
    eval: DemoEvalConfig = field(
        default_factory=lambda: DemoEvalConfig(
            episodes=50,
            start_seed=EVAL_SEED_START,
            num_envs=10,
            workers=2,
            record=150,
            captions=True,
        )  # fmt: skip
    )
    """50 rollouts per task (the paper's number) from held-out start states (seeds from 1000000
    on; demonstrations use seeds from 0), 10 envs stepped together, a 150-frame GIF of each
    task's first rollout for the report, and captions of held-out generated scenes."""
    budget_minutes: float | None = None
    """Wall-clock budget of the whole run in minutes, from collection to the report: sets the
    number of training steps (instead of --train.steps) from tokens/s measured after collection,
    so that training ends with --budget-eval-minutes left. None: --train.steps as given."""
    budget_eval_minutes: float = 6.0
    """With --budget-minutes: minutes kept for evaluation and the report (the demo's took 5.8
    min on 2 CPU cores)."""
    budget_calibration_steps: int = 10
    """With --budget-minutes: training steps run and thrown away to measure tokens/s, timed
    over their second half (the first steps allocate, compile and autotune)."""
    budget_margin: float = 0.05
    """With --budget-minutes: share of the time left for training that is kept in reserve."""


def _cores() -> int:
    return os.cpu_count() or 1


@dataclass
class SuiteConfig(DemoConfig):
    """Collect demonstrations, train one Gato on every built-in task, evaluate it, write a
    report: the demo's job at the scale of the whole suite, with a recipe for a GPU machine."""

    tasks: str = ",".join(SUITE)
    """Datasets to collect, train on and evaluate (the `opengato train --tasks` syntax): by
    default opengato.tasks.SUITE, every built-in control task (90 BabyAI levels, 50
    Meta-World tasks, 7 classic-control and Box2D tasks; not the 4 Meta-World pixel twins of
    state tasks) plus the text, question/answer and image-caption corpora."""
    out_dir: str = "runs/suite"
    """Folder for the run: `train/` (checkpoints, TensorBoard), `eval.json`, `report/`."""
    collect: DemoCollectConfig = field(
        default_factory=lambda: DemoCollectConfig(
            episodes=100,
            episodes_per_domain="babyai=300,metaworld=200,classic=200,babyai/UnlockToUnlock=100",
            random_episodes=100,
            seed=COLLECT_SEED_START,
            workers=_cores(),
            episode_timeout_s=2.0,
        )  # fmt: skip
    )
    """More demonstrations where the experts are cheap (measured on a shared 2-core machine:
    a BabyAI bot episode 0.024 s on average, a Meta-World scripted one 0.07 s): 300 per BabyAI
    level (the demo's 100 overfit at 16x its compute), 200 per Meta-World and classic task;
    100 random-policy episodes per task, the fewest a reference score may rest on
    (docs/evaluation.md; a Meta-World one runs all 500 steps, 0.27 s); every core. An episode
    gets 2 s: the slowest measured took 0.43 s, while the BabyAI bot loops forever on 47% of
    UnlockToUnlock's seeds (142 of 300), each holding a worker for the whole limit: that level
    gets 100."""
    train: DemoTrainConfig = field(
        default_factory=lambda: DemoTrainConfig(
            preset="gato-20m",
            steps=5000,
            batch_size=64,
            context_len=1024,
            lr=1e-3,
            warmup_steps=200,
            save_every=0,
            dtype="bf16",
            dropout=0.0,
            eval_batches=1,
            weights="babyai=2,metaworld=2,classic=0.5,text=0.1,qa=0.1,captions=0.3",
        )  # fmt: skip
    )
    """A starting point for a GPU, not yet tuned by measurement: gato-20m (at a few GPU minutes,
    tokens and demonstrations matter more than parameters: issue 13), 64 x 1024 tokens a step,
    the demo's lr, bf16 autocast, no dropout. Weights: BabyAI and Meta-World (140 of the 147
    tasks) 40% of the batches each, classic 10% (its 7 tasks need little), captions 6%, text and
    question/answer 2% each. One validation batch per dataset (151 of them)."""
    eval: DemoEvalConfig = field(
        default_factory=lambda: DemoEvalConfig(
            episodes=20,
            start_seed=EVAL_SEED_START,
            num_envs=20,
            env_workers=_cores(),
            concurrent_tasks=32,
            record=0,
            captions=True,
            device="auto",
        )  # fmt: skip
    )
    """20 rollouts per task from held-out start states (seeds from 1000000 on): one model, on
    the GPU when there is one (`auto`), acting for 32 tasks x 20 envs at once while every core
    steps the envs (benchmarks/eval_throughput.py); no GIFs (147 of them, and Meta-World's need
    an OpenGL context); captions of held-out generated scenes."""
    budget_eval_minutes: float = 3.0
    """With --budget-minutes: minutes kept for evaluation and the report (the target for 147
    tasks x 20 episodes on one GPU and 16 cores: issue 13)."""
    budget_calibration_steps: int = 20
    """With --budget-minutes: training steps run and thrown away to measure tokens/s, timed
    over their second half (the first steps allocate, compile and autotune; with
    --train.compile give more)."""


def stage_configs(cfg: DemoConfig) -> tuple[CollectConfig, TrainConfig, EvalConfig]:
    """The configs the collect, train and eval stages run with, each the verb's own: the recipe
    of `cfg` with the datasets, data root and output paths filled in. The evaluation's checkpoint
    is the training run's folder (`run_demo` passes the exact checkpoint training returns)."""
    from opengato.batches.sources import resolve_sources
    from opengato.tasks import select

    out = Path(cfg.out_dir)
    sources = resolve_sources(cfg.tasks)
    control = select(cfg.tasks)[0]
    if not control:
        raise ValueError(f"--tasks {cfg.tasks!r} names no control task to evaluate")
    # The default weights name the text and caption domains: keep only those in the mix.
    present = {x for src in sources for x in (src.domain, src.name)}
    weights = ",".join(
        w for w in cfg.train.weights.split(",") if w.split("=")[0].strip() in present
    )
    collect = _as(CollectConfig, cfg.collect, tasks=cfg.tasks, data_dir=cfg.data_dir)
    train = _as(TrainConfig, cfg.train, tasks=cfg.tasks, data_dir=cfg.data_dir,
                out_dir=str(out / "train"), eval_every=_eval_every(cfg.train.steps),
                weights=weights)  # fmt: skip
    evaluate = _as(EvalConfig, cfg.eval, checkpoint=train.out_dir, tasks=control,
                   data_dir=cfg.data_dir, out=str(out / "eval.json"),
                   device=_device(cfg.eval.device))  # fmt: skip
    return collect, train, evaluate


def _eval_every(steps: int) -> int:
    """The demo validates 4 times a run (and at step 0 and the last step)."""
    return max(steps // 4, 1)


def validation_passes(steps: int) -> int:
    """How many times a demo run of `steps` steps validates: at step 0, every `_eval_every`
    steps, and at the last step.

    >>> [validation_passes(n) for n in (1, 6, 19, 20, 1750)]
    [2, 7, 6, 5, 6]
    """
    every = _eval_every(steps)
    return 1 + steps // every + (steps % every != 0)


def _device(device: str) -> str:
    """`auto`: the GPU when there is one, else the CPU (as training's `--device auto`)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _as(verb_config: type, stage, **filled):
    """`stage` (a Demo*Config) as `verb_config` (the verb's own class), with `filled` set."""
    values = {f.name: getattr(stage, f.name) for f in fields(verb_config)}
    return verb_config(**{**values, **filled})


def _stage(n: int, name: str) -> float:
    print(f"\n=== [{n}/4] {name} ===", flush=True)
    return time.perf_counter()


# --------------------------------------------------------------------------- tokenising


def tokenize(train: TrainConfig, workers: int) -> None:
    """Build the token shards of `train`'s datasets (batches/sources.py) `workers` datasets at a
    time, where training would build them one after another; training then finds them up to
    date. The suite's 151 datasets hold a few hundred million tokens."""
    from opengato.batches.sources import resolve_sources
    from opengato.data.root import data_root
    from opengato.tokens.tokenizer import Tokenizer
    from opengato.workers import worker_map

    Tokenizer(train.tokenizer)  # builds and caches the text model once, before workers read it
    root = data_root(train.data_dir)
    shard_dir = Path(train.shard_dir) if train.shard_dir else root / "shards"
    jobs = [(src.name, train.tokenizer, str(root), str(shard_dir))
            for src in resolve_sources(train.tasks)]  # fmt: skip
    t = time.perf_counter()
    with worker_map(min(workers, len(jobs))) as run_map:
        built = [n for n in run_map(_tokenize_job, jobs) if n is not None]
    if built:
        print(f"tokenised {len(built)} of {len(jobs)} datasets ({sum(built):,} tokens) in "
              f"{time.perf_counter() - t:.1f} s, {min(workers, len(jobs))} at a time")  # fmt: skip


def _tokenize_job(job: tuple) -> int | None:
    """Worker entry: build one dataset's shard; its token count, or None when it was current."""
    from opengato.batches.sources import Source, build_shards
    from opengato.tokens.tokenizer import Tokenizer

    name, tokenizer_config, root, shard_dir = job
    notes: list[str] = []
    shard = build_shards([Source.of(name)], Tokenizer(tokenizer_config), root, shard_dir,
                         log=notes.append)[0]  # fmt: skip
    return shard.num_tokens if notes else None


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
    val_batches: int,
) -> dict:
    """The most training steps that fit in `left_s` seconds: keep `eval_s` for evaluation and
    the report and a `margin` share of the rest, take off the run's start-up, then fit the
    steps (`tokens_per_step` tokens at `tokens_per_s`) and their validation passes
    (`validation_passes`, each of `val_batches` batches that cost VALIDATION_BATCH_COST of a
    step) in what remains. Returns the plan; `steps` 0: no time to train.

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


def apply_budget(cfg: DemoConfig, train: TrainConfig, start: float) -> tuple[DemoConfig, dict]:
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
    val_batches = len(resolve_sources(train.tasks)) * train.eval_batches
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
        f"({validation_passes(max(plan['steps'], 1))} passes x {val_batches} batches)"
    )
    steps = plan["steps"]
    if steps < 1:
        raise ValueError(
            f"--budget-minutes {cfg.budget_minutes:g} leaves no time to train: "
            f"{spent / 60:.1f} min spent, {cfg.budget_eval_minutes:g} kept for evaluation, "
            f"{calib['startup_s']:.0f} s start-up and {plan['validation_s']:.0f} s validation"
        )
    warmup = min(train.warmup_steps, steps // 10)
    plan["warmup_steps"] = warmup
    print(
        f"=> --train.steps {steps:,} ({steps * plan['tokens_per_step']:,} tokens, "
        f"~{steps * plan['step_s'] / 60:.1f} min), warm-up {warmup} steps"
    )
    return replace(cfg, train=replace(cfg.train, steps=steps, warmup_steps=warmup)), plan


# --------------------------------------------------------------------------- the run


def summary_table(results: dict) -> str:
    """The evaluation's per-task table (opengato.agent.evaluate.format_results), the caption
    scores and the per-domain table (opengato.report.domain_table)."""
    from opengato.agent.evaluate import format_results
    from opengato.report import domain_table

    lines = [format_results(results)]
    if "captions" in results:
        c = results["captions"]
        lines.append("captions: " + ", ".join(f"{k} {v:.3f}" for k, v in c.items()
                                              if isinstance(v, float)))  # fmt: skip
    lines += ["", domain_table(results)]
    return "\n".join(lines)


def _write_config(out: Path, cfg: DemoConfig, stages: tuple, budget: dict | None) -> None:
    collect, train, evaluate = stages
    atomic_write_json(out / "demo_config.json", {
        "recipe": type(cfg).__name__, "tasks": cfg.tasks, "out_dir": cfg.out_dir,
        "data_dir": cfg.data_dir, "budget_minutes": cfg.budget_minutes, "budget": budget,
        "collect": asdict(collect), "train": asdict(train), "eval": asdict(evaluate),
    })  # fmt: skip


def run_demo(cfg: DemoConfig) -> dict:
    """Run the four stages; returns {'report': path, 'results': evaluation results, ...}."""
    from opengato.agent.evaluate import run_eval
    from opengato.data.collect import run_collect
    from opengato.report import ReportConfig, run_report
    from opengato.training.train import run_train

    start = time.perf_counter()
    collect, train, evaluate = stage_configs(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out, cfg, (collect, train, evaluate), None)
    times: dict[str, float] = {}

    # The demonstrations are the same whatever the training seed (collection has its own seed
    # stream), and every training seed is evaluated on the same held-out start states.
    t = _stage(1, f"collect demonstrations for {len(evaluate.tasks)} tasks + corpora, tokenise")
    run_collect(collect)
    tokenize(train, collect.workers)
    times["collect"] = time.perf_counter() - t

    budget = None
    if cfg.budget_minutes is not None:
        t = _stage(2, f"train {train.preset} on all tasks at once, steps set by the budget")
        cfg, budget = apply_budget(cfg, train, start)
        collect, train, evaluate = stage_configs(cfg)
        _write_config(out, cfg, (collect, train, evaluate), budget)
        times["calibrate"] = time.perf_counter() - t
    else:
        _stage(2, f"train {train.preset} for {train.steps} steps on all tasks at once")
    t = time.perf_counter()
    trained = run_train(train)
    times["train"] = time.perf_counter() - t

    t = _stage(3, f"evaluate {evaluate.episodes} episodes on each of {len(evaluate.tasks)} tasks")
    results = run_eval(replace(evaluate, checkpoint=trained["checkpoint"]))
    times["eval"] = time.perf_counter() - t

    t = _stage(4, "report")
    title = "opengato suite" if isinstance(cfg, SuiteConfig) else "opengato demo"
    report_dir = run_report(ReportConfig(results=[evaluate.out], out_dir=str(out / "report"),
                                         title=title))  # fmt: skip
    times["report"] = time.perf_counter() - t
    report = Path(report_dir) / "report.md"

    total = time.perf_counter() - start
    print("\n" + summary_table(results))
    print("\nstage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
          + f"; total {total / 60:.1f} min"
          + (f" of a {cfg.budget_minutes:g}-min budget" if budget else ""))  # fmt: skip
    print(f"training: {train.steps} steps, {trained['tokens_per_s']:,.0f} tokens/s, final val "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(trained["val"].items())
                      if k.endswith("action_loss") or k == "val/loss"))  # fmt: skip
    print(f"\nreport: {report}")
    return {"report": str(report), "results": results, "train": trained, "times": times,
            "budget": budget}  # fmt: skip
