"""Train variants of the demo's recipe side by side and score each on held-out seeds.

The recipe is `opengato.demo.DemoConfig` (one source of truth); a variant changes some fields of
its training stage (`DemoConfig.train`), and every stage runs with the configs
`opengato.demo.stage_configs` resolves. Used on a machine with a GPU and many cores to answer questions the CPU demo cannot in
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
"""Changes to the demo's training stage (`DemoConfig.train`, `opengato train`'s options)."""


def demo_config(args: argparse.Namespace):
    """The demo's config with this run's data root, workers and evaluation episodes (and the
    smoke tests' tasks and demonstrations per task)."""
    from opengato.demo import DemoConfig

    recipe = DemoConfig()
    collect = replace(recipe.collect, workers=args.workers)
    if args.episodes:
        collect = replace(collect, episodes=args.episodes)
    # task_job runs one task of one variant in a worker: one thread each, no GIFs or captions.
    evaluate = replace(recipe.eval, episodes=args.eval_episodes, record=0, captions=False,
                       threads=1)  # fmt: skip
    return replace(recipe, tasks=args.tasks or recipe.tasks, data_dir=args.data_dir,
                   collect=collect, eval=evaluate)  # fmt: skip


def variant_stages(demo, name: str, out: Path, device: str):
    """The (collect, train, eval) configs of variant `name`, its run under `out/work/<name>`."""
    from opengato.demo import stage_configs

    train = replace(demo.train, **VARIANTS[name], device=device, progress=False)
    return stage_configs(replace(demo, out_dir=str(out / "work" / name), train=train))


def _train(cfg) -> dict:
    from opengato.training.train import run_train

    try:
        s = run_train(cfg)
        return {"checkpoint": s["checkpoint"], "val": s["val"], "tokens_per_s": s["tokens_per_s"],
                "wall_s": s["wall_s"], "device": s["device"]}  # fmt: skip
    except Exception:
        return {"error": traceback.format_exc()}


def build_shards_once(demo, train) -> None:
    """Tokenise the demo's datasets, so that the variants' training processes (all with the
    same tokenizer) find the shards up to date instead of building them at the same time."""
    from opengato.batches.sources import build_shards, resolve_sources
    from opengato.data.root import data_root
    from opengato.tokens.tokenizer import Tokenizer

    root = data_root(demo.data_dir)
    build_shards(resolve_sources(demo.tasks), Tokenizer(train.tokenizer), root, root / "shards")


def train_all(train: dict) -> dict[str, dict]:
    """Train every variant in its own process at the same time; {name: summary or error}."""
    from opengato.workers import worker_map

    names = list(train)
    with worker_map(len(names)) as run_map:
        return dict(zip(names, run_map(_train, [train[n] for n in names]), strict=True))


def evaluate_all(evals: dict, workers: int) -> dict[str, dict[str, dict]]:
    """{variant: {task: result}}: every (variant, task) pair is one job in one pool, longest
    tasks first, so that all cores stay busy until the end (evaluating the checkpoints one after
    another would leave most cores idle behind each one's slowest task)."""
    from opengato.agent.evaluate import check_prompts, check_seeds, task_job
    from opengato.agent.scores import normalize_task
    from opengato.data.scores import load_scores
    from opengato.tasks import get_task
    from opengato.workers import worker_map

    for cfg in evals.values():  # held-out seeds and prompt data, checked before any rollout
        check_seeds(cfg.tasks, cfg, [cfg.data_dir])
        check_prompts(cfg.tasks, cfg)
    first = next(iter(evals.values()))
    order = sorted(first.tasks, key=lambda t: get_task(t).max_episode_steps, reverse=True)
    jobs = [(n, t) for t in order for n in evals]
    scores = load_scores(first.data_dir)
    per: dict[str, dict] = {n: {} for n in evals}
    with worker_map(workers) as run_map:
        for (n, t), r in zip(
            jobs, run_map(task_job, [(t, evals[n]) for n, t in jobs]), strict=True
        ):
            if "error" not in r:
                normalize_task(r, scores, get_task(t))
            per[n][t] = r
    return per


def summary(per: dict[str, dict[str, dict]]) -> dict:
    """Each variant's aggregates and the per-task numbers the table and the notes use."""
    from opengato.agent.scores import aggregate_results
    from opengato.seeds import EVAL_SEED_START

    keys = ("normalized_score", "success_rate", "mean_return", "n_errors", "error")
    return {n: {"aggregates": aggregate_results(rs, seed=EVAL_SEED_START),
                "tasks": {t: {k: r.get(k) for k in keys} for t, r in rs.items()}}
            for n, rs in per.items()}  # fmt: skip


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

    from opengato.data.collect import run_collect
    from opengato.files import atomic_write_json, atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demo = demo_config(args)
    names = args.variants.split(",")
    stages = {n: variant_stages(demo, n, out, args.device) for n in names}
    report: dict = {"demo": asdict(demo), "variants": {n: VARIANTS[n] for n in names}}
    t0 = time.perf_counter()

    collect, train, _ = stages[names[0]]
    run_collect(collect)  # skipped when current
    report["collect_s"] = time.perf_counter() - t0
    build_shards_once(demo, train)
    report["shards_s"] = time.perf_counter() - t0
    atomic_write_json(out / "variants.json", report)

    report["train"] = train_all({n: stages[n][1] for n in names})
    report["train_s"] = time.perf_counter() - t0
    atomic_write_json(out / "variants.json", report)

    evals = {n: replace(stages[n][2], checkpoint=t["checkpoint"])
             for n, t in report["train"].items() if "checkpoint" in t}  # fmt: skip
    report["eval"] = summary(evaluate_all(evals, args.workers))
    report["eval_s"] = time.perf_counter() - t0
    atomic_write_json(out / "variants.json", report)
    atomic_write_text(out / "variants.md", table(report))
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
