"""`opengato demo` and `opengato suite`: the main job, end to end, on the built-in tasks.

    opengato demo                                   # ~19-21 min on 2 CPU cores (README)
    opengato demo --tasks 'default,metaworld/push-v3' --train.preset gato-5m --train.steps 4000
    opengato suite --budget-minutes 8               # 156 control tasks + corpora, on a GPU

`opengato suite` is the same job with a second recipe (`SuiteConfig`: the same fields, other
defaults): every built-in control task but the held-out split (opengato.tasks.SUITE; the
held-out tasks are kept for `opengato finetune`), more demonstrations where the
experts are cheap, a bigger model and batch, and a shorter evaluation sized for a GPU machine.

Four stages, each the same code the separate verbs run (nothing is re-implemented here), each
configured by that verb's own config, nested here with the demo's recipe as its defaults:

1. collect   expert demonstrations for every task + text and image-caption corpora
             (opengato.data.collect.run_collect, `--collect.*`; resumable, skipped when
             already on disk);
2. train     one small Gato on all of them at once (opengato.training.train.run_train,
             `--train.*`);
3. eval      roll the single set of weights out on every control task, expert-normalised
             (opengato.agent.evaluate.run_eval, `--eval.*`), plus captions of held-out scenes
             and answers to held-out questions;
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
run and thrown away to measure tokens/s (opengato/budget.py, `calibrate`), and the run gets as many steps as fit in
what is left, less `--budget-eval-minutes` for evaluation and the report and a
`--budget-margin` share (`plan_steps`); the learning-rate schedule follows those steps.

Training is seeded by `--train.seed`: the same seed on the same machine gives the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from tyro.conf import Suppress

from opengato.agent.eval_config import EvalConfig
from opengato.budget import (
    LANGUAGE_AND_REPORT_S,
    apply_budget,
    eval_every,
    eval_minutes_left,
    tokenize,
    tokenize_job,
)
from opengato.data.collect import CollectConfig
from opengato.files import atomic_write_json
from opengato.seeds import COLLECT_SEED_START, EVAL_SEED_START
from opengato.tasks import HELDOUT_TASKS, SUITE
from opengato.training.config import TrainConfig
from opengato.workers import usable_cores

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
    allow_heldout_tasks: Suppress[bool] = False


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
    `default,metaworld/*,-heldout` (the held-out tasks are never pretrained on)."""
    out_dir: str = "runs/demo"
    """Folder for the run: `train/` (checkpoints, TensorBoard), `eval.json`, `report/`."""
    data_dir: str | None = None
    """Data root for demonstrations and corpora; default `$OPENGATO_DATA` or `~/.opengato/data`."""
    allow_heldout_tasks: bool = False
    """Train on tasks of the held-out split (opengato.tasks.HELDOUT_TASKS, kept for few-shot
    evaluation: docs/few-shot.md) if `--tasks` names them; without it such a run is refused
    before collection."""
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
    cores and at equal time matched or beat it; 1750 steps x 16 x 512 = 14.3M tokens, ~14-15 min
    on 2 cores; lr 1e-3 suits small presets on short runs (the paper: 1e-4); bf16 autocast is
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
            qa=True,
        )  # fmt: skip
    )
    """50 rollouts per task (the paper's number) from held-out start states (seeds from 1000000
    on; demonstrations use seeds from 0), 10 envs stepped together, a 150-frame GIF of each
    task's first rollout for the report, captions of held-out generated scenes and answers to
    held-out questions."""
    budget_minutes: float | None = None
    """Wall-clock budget of the whole run in minutes, from collection to the report: sets the
    number of training steps (instead of --train.steps) from tokens/s measured after collection,
    so that training ends with --budget-eval-minutes left. None: --train.steps as given."""
    budget_eval_minutes: float = 6.0
    """With --budget-minutes: minutes kept for evaluation and the report (the demo's took 4.1-5.2
    min on 2 CPU cores, README)."""
    budget_calibration_steps: int = 10
    """With --budget-minutes: training steps run and thrown away to measure tokens/s, timed
    over their second half (the first steps allocate, compile and autotune)."""
    budget_margin: float = 0.05
    """With --budget-minutes: share of the time left for training that is kept in reserve."""
    budget_min_steps: int = 0
    """With --budget-minutes: train at least this many steps when the budget leaves fewer
    (evaluation then gets what is left of the budget); 0: such a run stops with an error."""


@dataclass
class SuiteConfig(DemoConfig):
    """Collect demonstrations, train one Gato on every built-in task, evaluate it, write a
    report: the demo's job at the scale of the whole suite, with a recipe for a GPU machine."""

    tasks: str = ",".join(SUITE)
    """Datasets to collect, train on and evaluate (the `opengato train --tasks` syntax): by
    default opengato.tasks.SUITE, every built-in control task but the held-out split
    (`-heldout`: opengato.tasks.HELDOUT_TASKS, kept for few-shot fine-tuning), so 87 BabyAI
    levels, 45 Meta-World tasks, 6 classic-control and Box2D tasks and the MuJoCo, DM Control
    and MinAtar tasks whose experts ship (not the 4 Meta-World pixel twins of state tasks), plus
    the text, question/answer and image-caption corpora."""
    out_dir: str = "runs/suite"
    """Folder for the run: `train/` (checkpoints, TensorBoard), `eval.json`, `report/`."""
    collect: DemoCollectConfig = field(
        default_factory=lambda: DemoCollectConfig(
            episodes=100,
            episodes_per_domain="babyai=300,metaworld=200,classic=200,mujoco=200,dmc=200,"
            "minatar=200,babyai/UnlockToUnlock=100",
            random_episodes=100,
            seed=COLLECT_SEED_START,
            workers=usable_cores(),
            episode_timeout_s=2.0,
        )  # fmt: skip
    )
    """More demonstrations where the experts are cheap (measured on a shared 2-core machine:
    a BabyAI bot episode 0.024 s on average, a Meta-World scripted one 0.07 s): 300 per BabyAI
    level (the demo's 100 overfit at 16x its compute), 200 per task of the other domains;
    100 random-policy episodes per task, the fewest a reference score may rest on
    (docs/evaluation.md; a Meta-World one runs all 500 steps, 0.27 s), run only for a task whose
    shipped random score no longer matches its env (opengato/data/random_scores.py); every
    core. An episode gets 2 s: the slowest measured took 0.43 s, while the BabyAI bot loops forever on 47% of
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
            eval_batch_size=16,
            weights="babyai=2,metaworld=2,classic=0.5,mujoco=0.5,dmc=0.5,minatar=0.5,"
            "text=0.1,qa=0.1,captions=0.3",
        )  # fmt: skip
    )
    """A starting point for a GPU, not yet tuned by measurement: gato-20m (at a few GPU minutes,
    tokens and demonstrations matter more than parameters: issue 13), 64 x 1024 tokens a step,
    the demo's lr, bf16 autocast, no dropout. Weights: BabyAI and Meta-World (132 of the
    suite's tasks) 31% of the batches each, classic, MuJoCo, DM Control and MinAtar (a few
    tasks each) 7.7% each, captions 4.6%, text and question/answer 1.5% each. One validation
    batch of 16 rows per dataset: a pass covers 160 datasets, and at 64 rows it would cost the
    time of ~80 training steps (~6 s on an H100 at the calibration's 825,000 tokens/s, an
    estimate; 5 or 6 passes a run)."""
    eval: DemoEvalConfig = field(
        default_factory=lambda: DemoEvalConfig(
            episodes=20,
            start_seed=EVAL_SEED_START,
            num_envs=20,
            env_workers=usable_cores(),
            concurrent_tasks=64,
            group_tasks=32,
            mix_spaces=True,
            record=0,
            captions=True,
            qa=True,
            device="auto",
            weights="auto",
        )  # fmt: skip
    )
    """20 rollouts per task from held-out start states (seeds from 1000000 on): one model, on
    the GPU when there is one (`auto`), acting for 64 tasks x 20 envs at once while every core
    steps the envs (benchmarks/eval_throughput.py): two batches of 32 tasks, so that the env
    workers step one while the model acts for the other (with one, each waits for the other:
    with the GPU's forwards stood in for, 1.27x as fast on 2 cores, benchmarks/RESULTS.md; up
    to ~19 GB of RAM for 900 Meta-World envs at ~21 MB each); tasks in batches of up to 32
    through one policy each (`--eval.group-tasks`: a forward pass a step for all of them; on the
    2-core CPU, 6 Meta-World tasks played the same episodes with 2,000 forward passes instead
    of 12,000), whatever their spaces (`--eval.mix-spaces`: classic control, MuJoCo, DM Control
    and MinAtar share no spaces, and alone took 44,328 forwards for 4 episodes a task, mixed
    10,539; on a GPU, where a small forward costs its launches, that is the saving, not
    measured there yet);
    no GIFs (150 of them, and Meta-World's need an OpenGL context); captions of held-out
    generated scenes and answers to held-out questions. `weights="auto"`: on a GPU each forward
    shape is recorded as a CUDA graph and replayed (a forward of gato-20m is otherwise ~150
    kernel launches from Python), on a CPU packed weights."""
    budget_eval_minutes: float = 3.0
    """With --budget-minutes: minutes kept for evaluation and the report (the target for the
    suite's tasks x 20 episodes on one GPU and 16 cores: issue 13 asks it of 147)."""
    budget_calibration_steps: int = 20
    """With --budget-minutes: training steps run and thrown away to measure tokens/s, timed
    over their second half (the first steps allocate, compile and autotune; with
    --train.compile give more)."""


def stage_configs(cfg: DemoConfig) -> tuple[CollectConfig, TrainConfig, EvalConfig]:
    """The configs the collect, train and eval stages run with, each the verb's own: the recipe
    of `cfg` with the datasets, data root and output paths filled in. The evaluation's checkpoint
    is the training run's folder (`run_demo` passes the exact checkpoint training returns)."""
    from opengato.batches.sources import resolve_sources
    from opengato.tasks import check_not_heldout, select

    out = Path(cfg.out_dir)
    sources = resolve_sources(cfg.tasks)
    control = select(cfg.tasks)[0]
    if not control:
        raise ValueError(f"--tasks {cfg.tasks!r} names no control task to evaluate")
    check_not_heldout(control, cfg.allow_heldout_tasks)  # before collecting anything
    # The default weights name the text and caption domains: keep only those in the mix.
    present = {x for src in sources for x in (src.domain, src.name)}
    weights = ",".join(
        w for w in cfg.train.weights.split(",") if w.split("=")[0].strip() in present
    )
    collect = _as(CollectConfig, cfg.collect, tasks=cfg.tasks, data_dir=cfg.data_dir)
    train = _as(TrainConfig, cfg.train, tasks=cfg.tasks, data_dir=cfg.data_dir,
                out_dir=str(out / "train"), eval_every=eval_every(cfg.train.steps),
                weights=weights, allow_heldout_tasks=cfg.allow_heldout_tasks)  # fmt: skip
    # Captions are scored on held-out generated scenes, answers on held-out questions: only when
    # those are in the mix (else the evaluation would fail after training, on a dataset never
    # collected).
    evaluate = _as(EvalConfig, cfg.eval, checkpoint=train.out_dir, tasks=control,
                   data_dir=cfg.data_dir, out=str(out / "eval.json"),
                   device=_device(cfg.eval.device),
                   captions=cfg.eval.captions and "vision/scenes" in present,
                   qa=cfg.eval.qa and "text/qa" in present)  # fmt: skip
    return collect, train, evaluate


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


def _stage(n: int, name: str, start: float) -> float:
    """Print stage `n`'s banner with the run's time so far (what a log of a short GPU lease
    needs to tell where the minutes went); return the stage's start time."""
    now = time.perf_counter()
    print(f"\n=== [{n}/4] {name} === ({now - start:.0f} s into the run)", flush=True)
    return now


# --------------------------------------------------------------------------- the run


def summary_table(results: dict) -> str:
    """The evaluation's per-task table with the caption and answer scores
    (opengato.agent.evaluate.format_results) and the per-domain table
    (opengato.report.domain_table)."""
    from opengato.agent.evaluate import format_results
    from opengato.report import domain_table

    return "\n".join([format_results(results), "", domain_table(results)])


def _write_config(out: Path, cfg: DemoConfig, stages: tuple, budget: dict | None) -> None:
    collect, train, evaluate = stages
    atomic_write_json(out / "demo_config.json", {
        "recipe": type(cfg).__name__, "tasks": cfg.tasks, "out_dir": cfg.out_dir,
        "data_dir": cfg.data_dir, "budget_minutes": cfg.budget_minutes, "budget": budget,
        "collect": asdict(collect), "train": asdict(train), "eval": asdict(evaluate),
    })  # fmt: skip


def _print_summary(results, times, total, cfg, budget, train, trained) -> None:
    """The run's last lines: the evaluation table, the stage times, the training's speed and
    final validation losses."""
    print("\n" + summary_table(results))
    print("\nstage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
          + f"; total {total / 60:.1f} min"
          + (f" of a {cfg.budget_minutes:g}-min budget" if budget else ""))  # fmt: skip
    print(f"training: {train.steps} steps, {trained['tokens_per_s']:,.0f} tokens/s, final val "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(trained["val"].items())
                      if k.endswith("action_loss") or k == "val/loss"))  # fmt: skip


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

    if "-heldout" in (item.strip() for item in cfg.tasks.split(",")):
        print(f"left out of pretraining (`-heldout` in --tasks), for few-shot evaluation with "
              f"`opengato finetune` (docs/few-shot.md): {', '.join(HELDOUT_TASKS)}")  # fmt: skip

    # The demonstrations are the same whatever the training seed (collection has its own seed
    # stream), and every training seed is evaluated on the same held-out start states.
    t = _stage(
        1, f"collect demonstrations for {len(evaluate.tasks)} tasks + corpora, tokenise", start
    )
    tokenize(train, run_collect(collect, after=tokenize_job(train)))
    times["collect"] = time.perf_counter() - t

    budget = None
    if cfg.budget_minutes is not None:
        t = _stage(2, f"train {train.preset} on all tasks at once, steps set by the budget", start)
        cfg, budget = apply_budget(cfg, train, start)
        collect, train, evaluate = stage_configs(cfg)
        _write_config(out, cfg, (collect, train, evaluate), budget)
        times["calibrate"] = time.perf_counter() - t
    else:
        _stage(2, f"train {train.preset} for {train.steps} steps on all tasks at once", start)
    t = time.perf_counter()
    trained = run_train(train)
    times["train"] = time.perf_counter() - t

    t = _stage(
        3, f"evaluate {evaluate.episodes} episodes on each of {len(evaluate.tasks)} tasks", start
    )
    if budget is not None:  # the budget bounds the episodes too, leaving time for the rest
        evaluate = replace(evaluate, max_minutes=eval_minutes_left(cfg, start))
        print(f"the control tasks' episodes get {evaluate.max_minutes:g} min (what the budget "
              f"leaves, less {LANGUAGE_AND_REPORT_S:.0f} s for captions, answers and the report); "
              "a task unfinished by then is left out of the scores and named")  # fmt: skip
    results = run_eval(replace(evaluate, checkpoint=trained["checkpoint"]))
    times["eval"] = time.perf_counter() - t

    t = _stage(4, "report", start)
    title = "opengato suite" if isinstance(cfg, SuiteConfig) else "opengato demo"
    report_dir = run_report(ReportConfig(results=[evaluate.out], out_dir=str(out / "report"),
                                         title=title))  # fmt: skip
    times["report"] = time.perf_counter() - t
    report = Path(report_dir) / "report.md"

    _print_summary(results, times, time.perf_counter() - start, cfg, budget, train, trained)
    print(f"\nreport: {report}")
    return {"report": str(report), "results": results, "train": trained, "times": times,
            "budget": budget}  # fmt: skip
