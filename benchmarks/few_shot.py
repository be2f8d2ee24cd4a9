"""Few-shot learning on held-out tasks, the counterpart of the paper's Figure 10 (docs/few-shot.md).

For every N (demonstrations per task), seed and variant, one `opengato finetune` run (in this
process, through run_finetune) into `<out>/<variant>/n<N>/s<seed>/`:

    finetune     the pretrained checkpoint fine-tuned on the N demonstrations
    scratch      the same model config trained from a random init on the same N (--from-scratch)
    prompt       no weight update, each episode prompted with one of the N (drawn at random)
    retrieval    no weight update, prompted with the demonstration nearest its start state

Seed s seeds both training (--seed) and which N demonstrations are drawn (--demo-seed), so seeds
differ in their demonstrations too. Evaluation uses the verb's held-out start states (seeds from
1000000), the same for every cell. Resumable: a cell whose eval.json exists is read, not rerun.
Writes `<out>/few_shot.json` (every cell, with the commit, machine, command, date and wall
time), `<out>/few_shot.md` (mean +- std over seeds of the normalised score, per task and
averaged) and a plot of the mean normalised score against N (`--plot`).

    python benchmarks/few_shot.py runs/demo/train/step_0001750 --data-dir /work/fewshot-data \\
        --tasks babyai/GoToLocal,metaworld/hand-insert-v3,classic/Pendulum-v1 \\
        --demos 1,5,25 --seeds 0,1,2 --episodes 20 --out runs/few_shot

On a small, busy CPU machine run it with OMP_NUM_THREADS=1: torch's default of one thread per
core made each cell several times slower on 2 shared cores (docs/few-shot.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from opengato.files import atomic_write_json, atomic_write_text

VARIANTS = {
    "finetune": {"mode": "finetune"},
    "scratch": {"mode": "finetune", "from_scratch": True},
    "prompt": {"mode": "prompt"},
    "retrieval": {"mode": "prompt", "retrieval": True},
}
LABELS = {"finetune": "pretrained + fine-tuned", "scratch": "from scratch (same model)",
          "prompt": "prompt only", "retrieval": "prompt only + retrieval"}  # fmt: skip
STYLES = {"retrieval": {"marker": "s", "linestyle": "--"}}  # often on top of `prompt`


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="the pretrained checkpoint (folder)")
    p.add_argument("--tasks", default="heldout", help="held-out tasks (the --tasks grammar)")
    p.add_argument("--data-dir", required=True, help="data root with their demonstrations")
    p.add_argument("--demos", default="1,5,10,25,100", help="comma-separated N")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per task")
    p.add_argument("--num-envs", type=int, default=10, help="environments stepped at once")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: scaled)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--out", default="runs/few_shot", help="folder for the cells and results")
    p.add_argument("--plot", default=None, help="plot file (default <out>/few_shot.png)")
    p.add_argument("--report-only", action="store_true", help="tabulate finished cells only")
    return p.parse_args(argv)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def cell_config(args: argparse.Namespace, variant: str, n: int, seed: int, out: Path):
    """The `opengato finetune` config of one cell."""
    from opengato.finetune import FinetuneConfig, FinetuneEvalConfig

    evaluate = FinetuneEvalConfig(episodes=args.episodes,
                                  num_envs=min(args.num_envs, args.episodes))  # fmt: skip
    return FinetuneConfig(args.checkpoint, tasks=args.tasks, demos=n, demo_seed=seed, seed=seed,
                          data_dir=args.data_dir, out_dir=str(out), steps=args.steps,
                          batch_size=args.batch_size, progress=False, eval=evaluate,
                          **VARIANTS[variant])  # fmt: skip


def run_cell(args: argparse.Namespace, variant: str, n: int, seed: int) -> dict:
    """Run one cell unless its eval.json exists; returns its record (scores per task)."""
    from opengato.finetune import run_finetune

    out = Path(args.out) / variant / f"n{n}" / f"s{seed}"
    wall = None
    if not (out / "finetune.json").is_file():
        if out.exists():  # an interrupted cell: start it again
            shutil.rmtree(out)
        print(f"--- {variant} N={n} seed={seed} -> {out}", flush=True)
        start = time.time()
        run_finetune(cell_config(args, variant, n, seed, out))
        wall = time.time() - start
        (out / "wall_s.txt").write_text(f"{wall:.1f}\n")
    return read_cell(out, variant, n, seed)


def read_cell(out: Path, variant: str, n: int, seed: int) -> dict:
    """A finished cell's record: normalised score (percent) per task, training summary."""
    summary = json.loads((out / "finetune.json").read_text())
    results = json.loads((out / "eval.json").read_text())
    scores = {t: r.get("normalized_score") for t, r in results["tasks"].items()}
    trained = summary.get("train") or {}
    wall = out / "wall_s.txt"
    return {"variant": variant, "demos": n, "seed": seed, "scores": scores,
            "demo_seeds": summary["demo_seeds"], "best_step": (trained.get("early_stop") or {})
            .get("best_step"), "train_steps": (summary.get("train_config") or {}).get("steps"),
            "wall_s": float(wall.read_text()) if wall.is_file() else None}  # fmt: skip


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) std of the finite values; nan for none."""
    x = np.asarray([v for v in values if v is not None], np.float64)
    return (float(x.mean()), float(x.std())) if len(x) else (float("nan"), float("nan"))


def summarise(cells: list[dict]) -> dict:
    """(variant, N) -> {task or 'average': (mean, std, seeds)} over seeds; the average is the
    mean over tasks within each seed, then mean +- std over seeds."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["variant"], c["demos"]), []).append(c)
    table = {}
    for key, group in groups.items():
        tasks = sorted({t for c in group for t in c["scores"]})
        row = {t: (*mean_std([c["scores"].get(t) for c in group]), len(group)) for t in tasks}
        per_seed = [mean_std(list(c["scores"].values()))[0] for c in group]
        row["average"] = (*mean_std(per_seed), len(group))
        table[key] = row
    return table


def markdown(table: dict, variants: list[str]) -> str:
    """The table: one row per (N, variant), one column per task and the average."""
    if not table:
        return "(no finished cells)\n"
    tasks = sorted({t for row in table.values() for t in row if t != "average"})
    head = ["N", "variant", *[t.split("/")[-1] for t in tasks], "average", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 2 + " ---: |" * (len(tasks) + 2)]
    for n in sorted({n for _, n in table}):
        for v in [v for v in variants if (v, n) in table]:
            row = table[(v, n)]
            cols = [f"{row[t][0]:.1f} +- {row[t][1]:.1f}" if t in row else "-" for t in tasks]
            avg = row["average"]
            lines.append(f"| {n} | {LABELS[v]} | " + " | ".join(cols)
                         + f" | **{avg[0]:.1f} +- {avg[1]:.1f}** | {avg[2]} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(table: dict, variants: list[str], path: Path, title: str) -> None:
    """Figure 10's shape: mean normalised score over tasks against N, one line per variant,
    a band of +- one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v in variants:
        ns = sorted(n for w, n in table if w == v)
        if not ns:
            continue
        mean = np.array([table[(v, n)]["average"][0] for n in ns])
        std = np.array([table[(v, n)]["average"][1] for n in ns])
        style = STYLES.get(v, {})
        ax.plot(ns, mean, label=LABELS[v], **{"marker": "o", **style})
        ax.fill_between(ns, mean - std, mean + std, alpha=0.2)
    ax.axhline(100, color="grey", lw=0.8, ls=":")  # the expert
    ax.axhline(0, color="grey", lw=0.8, ls=":")  # random actions
    ax.set_xscale("log")
    ax.set_xlabel("demonstrations per task (N)")
    ax.set_ylabel("normalised score (%), mean over tasks")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def provenance(argv: list[str], wall_s: float) -> dict:
    """Commit, machine, command, date and wall time of this invocation (the bench's own
    `git_commit` and `machine`)."""
    from opengato.bench_tables import machine
    from opengato.files import git_commit

    commit, m = git_commit() or "unknown", machine()
    return {"commit": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty"),
            "machine": f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
                       f"{m['torch_threads']} threads",
            "command": " ".join(["python", "benchmarks/few_shot.py", *argv]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "wall_s_this_invocation": round(wall_s, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if unknown := [v for v in variants if v not in VARIANTS]:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    start, out = time.time(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    for n in ints(args.demos):  # cheapest first, so a cut-short run has whole rows
        for seed in ints(args.seeds):
            for v in variants:
                done = (out / v / f"n{n}" / f"s{seed}" / "finetune.json").is_file()
                if args.report_only and not done:
                    continue
                cells.append(run_cell(args, v, n, seed))
                write_results(args, argv, variants, cells, time.time() - start)
    write_results(args, argv, variants, cells, time.time() - start)
    print((out / "few_shot.md").read_text())
    return 0


def write_results(args, argv: list[str], variants: list[str], cells: list[dict], wall: float
                  ) -> None:  # fmt: skip
    """few_shot.json, few_shot.md and the plot, from the cells so far."""
    out = Path(args.out)
    table = summarise(cells)
    meta = provenance(argv, wall)
    previous = out / "few_shot.json"
    if args.report_only and previous.is_file():  # keep what ran the cells, not this re-tabulation
        meta = {**json.loads(previous.read_text()), "retabulated": meta}
        meta = {k: v for k, v in meta.items() if k not in ("cells", "table")}
    cell_wall = sum(c["wall_s"] or 0 for c in cells)
    record = {"args": vars(args), **meta, "wall_s_cells": round(cell_wall, 1), "cells": cells,
              "table": {f"{v} N={n}": row for (v, n), row in table.items()}}  # fmt: skip
    atomic_write_json(out / "few_shot.json", record)
    head = (f"commit {meta['commit'][:7]}{' (dirty)' if meta['dirty'] else ''}, "
            f"{meta['machine']}, {meta['date']}, cells' wall time {cell_wall / 60:.1f} min\n\n"
            f"`{meta['command']}`\n\n")  # fmt: skip
    atomic_write_text(out / "few_shot.md", head + markdown(table, variants))
    if table:
        plot(table, variants, Path(args.plot or out / "few_shot.png"),
             f"opengato few-shot, {args.episodes} episodes/task, seeds {args.seeds}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
