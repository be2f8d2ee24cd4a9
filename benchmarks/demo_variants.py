"""Train variants of the demo's recipe side by side and score each on held-out seeds.

The recipe is `opengato.demo.DemoConfig` (one source of truth); a variant overrides some of its
fields. Used on a machine with a GPU and many cores to answer questions the CPU demo cannot in
its time: does packing help, does training seed matter, how far is the goal at 4x the tokens.

    python benchmarks/demo_variants.py --out OUT --variants pack-s0,nopack-s0 --workers 16

Steps: collect the demo's data (skipped when current), build the token shards once, train every
variant in its own process at the same time (one GPU serves them all), then evaluate each
checkpoint with `opengato eval` (50 held-out episodes per task, tasks spread over worker
processes). Writes `OUT/variants.json` (validation losses, tokens/s, per-task and aggregate
scores) after each stage and `OUT/variants.md` (a table) at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

VARIANTS: dict[str, dict] = {
    "pack-s0": dict(seed=0),
    "pack-s1": dict(seed=1),
    "pack-s2": dict(seed=2),
    "nopack-s0": dict(seed=0, pack=False),
    "nopack-s1": dict(seed=1, pack=False),
    "b64-s0": dict(seed=0, batch_size=64),  # 4x the tokens in the same number of steps
    "smoke": dict(steps=4, warmup_steps=1, batch_size=2, context_len=64, preset="gato-tiny"),
}


def train_config(demo, name: str, out: Path, device: str):
    """The TrainConfig the demo would run, with the variant's overrides."""
    from opengato.demo import train_config_of

    over = dict(VARIANTS[name])
    pack = over.pop("pack", True)
    cfg = replace(demo, **over)
    return replace(train_config_of(cfg, str(out / "work" / name)), pack=pack, device=device,
                   progress=False)  # fmt: skip


def _train(args) -> dict:
    from opengato.training.train import run_train

    cfg = args
    try:
        s = run_train(cfg)
        return {"checkpoint": s["checkpoint"], "val": s["val"], "tokens_per_s": s["tokens_per_s"],
                "wall_s": s["wall_s"], "device": s["device"]}  # fmt: skip
    except Exception:
        return {"error": traceback.format_exc()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/variants")
    p.add_argument("--data-dir")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--tasks", help="override the demo's tasks (smoke tests)")
    p.add_argument("--episodes", type=int, help="override the demo's demonstrations per task")
    args = p.parse_args()

    from opengato.agent.evaluate import (
        EvalConfig,
        aggregate_results,
        check_prompts,
        check_seeds,
        normalize_task,
        task_job,
    )
    from opengato.batches.sequences import build_shards, resolve_sources
    from opengato.data.datasets import CollectConfig, data_root, load_scores, run_collect
    from opengato.demo import DemoConfig
    from opengato.seeds import COLLECT_SEED_START, EVAL_SEED_START
    from opengato.tasks import get_task
    from opengato.tokens.tokenizer import Tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demo = replace(DemoConfig(), data_dir=args.data_dir, workers=args.workers)
    if args.tasks:
        demo = replace(demo, tasks=args.tasks)
    if args.episodes:
        demo = replace(demo, episodes=args.episodes)
    names = args.variants.split(",")
    report: dict = {"demo": asdict(demo), "variants": {n: VARIANTS[n] for n in names}}
    save = lambda: (out / "variants.json").write_text(json.dumps(report, indent=1))  # noqa: E731
    t0 = time.perf_counter()

    run_collect(CollectConfig(tasks=demo.tasks, episodes=demo.episodes, seed=COLLECT_SEED_START,
                              data_dir=demo.data_dir, workers=args.workers))  # fmt: skip
    report["collect_s"] = time.perf_counter() - t0
    cfgs = {n: train_config(demo, n, out, args.device) for n in names}
    first = next(iter(cfgs.values()))
    root = data_root(demo.data_dir)
    build_shards(resolve_sources(demo.tasks), Tokenizer(first.tokenizer), root, root / "shards")
    report["shards_s"] = time.perf_counter() - t0
    save()

    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(len(names), mp_context=ctx) as pool:
        trained = dict(zip(names, pool.map(_train, [cfgs[n] for n in names]), strict=True))
    report["train"] = trained
    report["train_s"] = time.perf_counter() - t0
    save()

    # Every (variant, task) pair is one job in one pool, longest tasks first, so that all cores
    # stay busy until the end (evaluating the checkpoints one after another would leave most
    # cores idle behind each one's slowest task).
    tasks = [s.name for s in resolve_sources(demo.tasks) if s.kind == "control"]
    evals = {
        n: EvalConfig(
            checkpoint=t["checkpoint"],
            tasks=tasks,
            episodes=args.eval_episodes,
            start_seed=EVAL_SEED_START,
            num_envs=demo.num_envs,
            data_dir=demo.data_dir,
            threads=1,
        )  # fmt: skip
        for n, t in trained.items()
        if "checkpoint" in t
    }
    for cfg in evals.values():  # held-out seeds and prompt data, checked before any rollout
        check_seeds(tasks, cfg, [demo.data_dir])
        check_prompts(tasks, cfg)
    order = sorted(tasks, key=lambda t: get_task(t).max_episode_steps, reverse=True)
    jobs = [(t, evals[n]) for t in order for n in evals]
    scores = load_scores(demo.data_dir)
    per: dict[str, dict] = {n: {} for n in evals}
    with cf.ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        for (t, cfg), r in zip(jobs, pool.map(task_job, jobs), strict=True):
            n = next(k for k, c in evals.items() if c is cfg)
            if "error" not in r:
                normalize_task(r, scores, get_task(t))
            per[n][t] = r
    report["eval"] = {
        n: {
            "aggregates": aggregate_results(rs, seed=EVAL_SEED_START),
            "tasks": {
                t: {
                    k: r.get(k)
                    for k in (
                        "normalized_score",
                        "success_rate",
                        "mean_return",
                        "n_errors",
                        "error",
                    )
                }
                for t, r in rs.items()
            },
        }  # fmt: skip
        for n, rs in per.items()
    }
    report["eval_s"] = time.perf_counter() - t0
    save()
    (out / "variants.md").write_text(table(report))
    print(table(report))


def table(report: dict) -> str:
    """Per-variant validation action loss per domain and held-out scores, as Markdown."""
    rows = ["| variant | tokens/s | val action loss babyai / classic / metaworld | tasks >= 50% | "
            "IQM | mean |", "| --- | ---: | --- | ---: | ---: | ---: |"]  # fmt: skip
    for n, t in report.get("train", {}).items():
        if "val" not in t:
            rows.append(f"| {n} | error | | | | |")
            continue
        v = t["val"]
        loss = " / ".join(f"{v.get(f'val/{d}/action_loss', float('nan')):.3f}"
                          for d in ("babyai", "classic", "metaworld"))  # fmt: skip
        a = report.get("eval", {}).get(n, {}).get("aggregates", {}).get("overall", {})
        score = (f"{a['tasks_ge_50']} of {a['n_tasks']} | {a['iqm']:.1f} | {a['mean']:.1f}"
                 if a.get("n_tasks") else "- | - | -")  # fmt: skip
        rows.append(f"| {n} | {t['tokens_per_s']:,.0f} | {loss} | {score} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
