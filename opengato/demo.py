"""`opengato demo`: the main job, end to end, on the built-in default tasks.

    opengato demo                                   # ~30 min on 2 CPU cores (README)
    opengato demo --tasks 'default,metaworld/push-v3' --preset gato-5m --steps 4000   # scale up

Four stages, each the same code the separate verbs run (nothing is re-implemented here):

1. collect   expert demonstrations for every task + text and image-caption corpora
             (opengato.data.datasets.run_collect; resumable, skipped when already on disk);
2. train     one small Gato on all of them at once (opengato.training.train.run_train);
3. eval      roll the single set of weights out on every control task, expert-normalised
             (opengato.agent.evaluate.run_eval), plus captions of held-out scenes;
4. report    Markdown/HTML with Figure 5, per-domain bars and rollout GIFs (opengato.report).

Evaluation follows the paper's protocol: 50 rollouts per task, each from a start state that no
demonstration used (opengato/seeds.py).

Training is seeded by `seed`: the same seed on the same machine gives the same numbers.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal


@dataclass
class DemoConfig:
    """Collect demonstrations, train one Gato on all default tasks, evaluate it, write a report."""

    tasks: str = "default"
    """Datasets to collect and train on (the `opengato train --tasks` syntax): `default` is
    opengato.tasks.DEFAULT_TASKS (4 BabyAI levels, 4 Meta-World tasks, 4 classic-control tasks)
    plus the text and image-caption corpora. Add suites or globs to scale up, e.g.
    `default,metaworld/*`."""
    out_dir: str = "runs/demo"
    """Folder for the run: `train/` (checkpoints, TensorBoard), `eval.json`, `report/`."""
    data_dir: str | None = None
    """Data root for demonstrations and corpora; default `$OPENGATO_DATA` or `~/.opengato/data`."""
    episodes: int = 100
    """Expert demonstrations collected per control task."""
    preset: str = "gato-1m"
    """Model preset (opengato.model.gato.PRESETS); bigger ones need more steps and time. On 2 CPU cores
    gato-1m trains 2.4x more tokens per minute than gato-5m, and at equal training time it matched
    or beat gato-5m on the default tasks (docs/recipe-sweep.md)."""
    steps: int = 1750
    """Training steps (1750 x 16 x 512 = 14.3M tokens; ~17 min for gato-1m on 2 cores)."""
    batch_size: int = 16
    """Sequences per training step."""
    context_len: int = 512
    """Tokens per training sequence and the policy's context window."""
    lr: float = 1e-3
    """Peak learning rate (small presets on short runs like 1e-3; the paper used 1e-4)."""
    warmup_steps: int = 50
    """Linear learning-rate warm-up steps."""
    dtype: Literal["fp32", "bf16"] = "bf16"
    """Training compute dtype: bf16 autocast (fp32 weights) is 1.1x (gato-1m) to 1.7x (gato-5m)
    faster on CPUs with AVX512-BF16 (benchmarks/RESULTS.md); fp32 elsewhere."""
    dropout: float = 0.0
    """Dropout. The paper's 0.1 regularises a model that sees each token once; a 5M model
    trained for minutes underfits, and measured better without it."""
    weights: str = "babyai=2,metaworld=0.5,text=0.1,qa=0.05,captions=0.1"
    """Mixture weights (`opengato train --weights`; unnamed control suites get 1). Chosen by
    measurement (docs/recipe-sweep.md): at this budget BabyAI is the suite still improving, while
    Meta-World needs ~4-16x more training than 30 CPU minutes allow whatever its share; text and
    captions are kept in the mix but light, so that minutes of training go mostly to control."""
    bin_init: Literal["normal", "smooth"] = "normal"
    """Initial embeddings of the continuous-value bins (`opengato train --bin-init`)."""
    eval_episodes: int = 50
    """Rollouts per task in the evaluation (the paper: 50), on held-out start states (seeds
    from 1000000 on; demonstrations use seeds from 0)."""
    num_envs: int = 10
    """Environments stepped together per task during evaluation (one forward pass for all)."""
    record: int = 150
    """Frames of each task's first rollout saved as a GIF for the report (0: none)."""
    captions: bool = True
    """Also caption held-out generated scenes and score them."""
    workers: int = 2
    """Processes for collection and evaluation."""
    seed: int = 0
    """Seeds training (model init, data order, dropout) and the evaluation's action sampling.
    The demonstrations (seeds 0, 1, ...) and the evaluation's start states (seeds 1000000, ...)
    do not depend on it, so runs with different seeds are comparable."""
    progress: bool = True
    """Show progress bars."""


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


def train_config_of(cfg: DemoConfig, out_dir: str):
    """The `TrainConfig` of the demo's training stage (the demo recipe, in one place)."""
    from opengato.batches.sequences import resolve_sources
    from opengato.training.train import TrainConfig

    # The default weights name the text and caption domains: keep only those in the mix.
    present = {x for src in resolve_sources(cfg.tasks) for x in (src.domain, src.name)}
    weights = ",".join(w for w in cfg.weights.split(",") if w.split("=")[0].strip() in present)
    return TrainConfig(
        preset=cfg.preset, tasks=cfg.tasks, data_dir=cfg.data_dir, out_dir=out_dir,
        steps=cfg.steps, batch_size=cfg.batch_size, context_len=cfg.context_len, lr=cfg.lr,
        warmup_steps=cfg.warmup_steps, seed=cfg.seed, eval_every=max(cfg.steps // 4, 1),
        save_every=0, dtype=cfg.dtype, dropout=cfg.dropout, weights=weights,
        bin_init=cfg.bin_init, progress=cfg.progress,
    )  # fmt: skip


def run_demo(cfg: DemoConfig) -> dict:
    """Run the four stages; returns {'report': path, 'results': evaluation results, ...}."""
    from opengato.agent.evaluate import EvalConfig, run_eval
    from opengato.batches.sequences import resolve_sources
    from opengato.data.datasets import CollectConfig, run_collect
    from opengato.report import ReportConfig, run_report
    from opengato.seeds import COLLECT_SEED_START, EVAL_SEED_START
    from opengato.training.train import run_train

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    sources = resolve_sources(cfg.tasks)
    control = [src.name for src in sources if src.kind == "control"]
    if not control:
        raise ValueError(f"--tasks {cfg.tasks!r} names no control task to evaluate")
    times: dict[str, float] = {}

    # The demonstrations are the same whatever the training seed (collection has its own seed
    # stream), and every training seed is evaluated on the same held-out start states.
    t = _stage(1, f"collect {cfg.episodes} demonstrations for {len(control)} tasks + corpora")
    run_collect(CollectConfig(tasks=cfg.tasks, episodes=cfg.episodes, seed=COLLECT_SEED_START,
                              data_dir=cfg.data_dir, workers=cfg.workers))  # fmt: skip
    times["collect"] = time.perf_counter() - t

    t = _stage(2, f"train {cfg.preset} for {cfg.steps} steps on all tasks at once")
    train = run_train(train_config_of(cfg, str(out / "train")))
    times["train"] = time.perf_counter() - t

    t = _stage(3, f"evaluate {cfg.eval_episodes} episodes on each of {len(control)} tasks")
    results = run_eval(EvalConfig(
        checkpoint=train["checkpoint"], tasks=control, episodes=cfg.eval_episodes,
        start_seed=EVAL_SEED_START, num_envs=cfg.num_envs, workers=cfg.workers, data_dir=cfg.data_dir,
        out=str(out / "eval.json"), record=cfg.record, captions=cfg.captions,
    ))  # fmt: skip
    times["eval"] = time.perf_counter() - t

    t = _stage(4, "report")
    report = run_report(ReportConfig(results=[str(out / "eval.json")], out_dir=str(out / "report"),
                                     title="opengato demo"))  # fmt: skip
    times["report"] = time.perf_counter() - t
    report = Path(report) / "report.md"  # run_report returns its folder (report.md, .html, PNGs)

    print("\n" + summary_table(results))
    print("\nstage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"training: {train['tokens_per_s']:,.0f} tokens/s, final val "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(train["val"].items())
                      if k.endswith("action_loss") or k == "val/loss"))  # fmt: skip
    print(f"\nreport: {report}")
    return {"report": str(report), "results": results, "train": train, "times": times}
