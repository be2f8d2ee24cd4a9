"""`opengato demo`: the main job, end to end, on the built-in default tasks.

    opengato demo                                   # ~30 min on 2 CPU cores (README)
    opengato demo --tasks 'default,metaworld/push-v3' --train.preset gato-5m --train.steps 4000

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

Training is seeded by `--train.seed`: the same seed on the same machine gives the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from tyro.conf import Suppress

from opengato.agent.eval_config import EvalConfig
from opengato.data.collect import CollectConfig
from opengato.files import atomic_write_json
from opengato.seeds import COLLECT_SEED_START, EVAL_SEED_START
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
                out_dir=str(out / "train"), eval_every=max(cfg.train.steps // 4, 1),
                weights=weights)  # fmt: skip
    evaluate = _as(EvalConfig, cfg.eval, checkpoint=train.out_dir, tasks=control,
                   data_dir=cfg.data_dir, out=str(out / "eval.json"))  # fmt: skip
    return collect, train, evaluate


def _as(verb_config: type, stage, **filled):
    """`stage` (a Demo*Config) as `verb_config` (the verb's own class), with `filled` set."""
    values = {f.name: getattr(stage, f.name) for f in fields(verb_config)}
    return verb_config(**{**values, **filled})


def _stage(n: int, name: str) -> float:
    print(f"\n=== [{n}/4] {name} ===", flush=True)
    return time.perf_counter()


def summary_table(results: dict) -> str:
    """The evaluation's per-task table (opengato.agent.evaluate.format_results) plus one line per
    domain and the caption scores."""
    from opengato.agent.evaluate import format_results

    lines = [format_results(results)]
    for domain, a in results.get("aggregates", {}).get("domains", {}).items():
        if a.get("n_tasks"):
            lines.append(f"  {domain:<10} ({a['n_tasks']} tasks): mean {a['mean']:.1f}, "
                         f"median {a['median']:.1f}, IQM {a['iqm']:.1f}; "
                         f">=50%: {a['tasks_ge_50']}, >=80%: {a['tasks_ge_80']}")  # fmt: skip
    if "captions" in results:
        c = results["captions"]
        lines.append("captions: " + ", ".join(f"{k} {v:.3f}" for k, v in c.items()
                                              if isinstance(v, float)))  # fmt: skip
    return "\n".join(lines)


def run_demo(cfg: DemoConfig) -> dict:
    """Run the four stages; returns {'report': path, 'results': evaluation results, ...}."""
    from opengato.agent.evaluate import run_eval
    from opengato.data.collect import run_collect
    from opengato.report import ReportConfig, run_report
    from opengato.training.train import run_train

    collect, train, evaluate = stage_configs(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "demo_config.json", {
        "tasks": cfg.tasks, "out_dir": cfg.out_dir, "data_dir": cfg.data_dir,
        "collect": asdict(collect), "train": asdict(train), "eval": asdict(evaluate),
    })  # fmt: skip
    times: dict[str, float] = {}

    # The demonstrations are the same whatever the training seed (collection has its own seed
    # stream), and every training seed is evaluated on the same held-out start states.
    t = _stage(1, f"collect {collect.episodes} demonstrations for {len(evaluate.tasks)} tasks "
                  "+ corpora")  # fmt: skip
    run_collect(collect)
    times["collect"] = time.perf_counter() - t

    t = _stage(2, f"train {train.preset} for {train.steps} steps on all tasks at once")
    trained = run_train(train)
    times["train"] = time.perf_counter() - t

    t = _stage(3, f"evaluate {evaluate.episodes} episodes on each of {len(evaluate.tasks)} tasks")
    results = run_eval(replace(evaluate, checkpoint=trained["checkpoint"]))
    times["eval"] = time.perf_counter() - t

    t = _stage(4, "report")
    report_dir = run_report(ReportConfig(results=[evaluate.out], out_dir=str(out / "report"),
                                         title="opengato demo"))  # fmt: skip
    times["report"] = time.perf_counter() - t
    report = Path(report_dir) / "report.md"

    print("\n" + summary_table(results))
    print("\nstage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"training: {trained['tokens_per_s']:,.0f} tokens/s, final val "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(trained["val"].items())
                      if k.endswith("action_loss") or k == "val/loss"))  # fmt: skip
    print(f"\nreport: {report}")
    return {"report": str(report), "results": results, "train": trained, "times": times}
