"""Evaluation throughput: `opengato eval` over N tasks x E episodes, the old ways and the new,
side by side in one run.

Paths (`--paths`, each run in a fresh spawned process that times `run_eval` alone: model
loading, env workers, prompts, rollouts, results file):

- `here`: task after task, envs stepped in the evaluating process (`opengato eval`'s default);
- `workers`: a process per task, each loading the model (`--workers W`);
- `pool`: one model in one process, envs stepped in env worker processes, several tasks at once
  (`--env-workers N --concurrent-tasks K`);
- `grouped`: `pool`, and up to G tasks of a domain whose envs have the same spaces act as one
  batch through one policy (`--group-tasks G`): fewer, larger forward passes;
- `mixed`: `grouped`, and the G tasks may have any spaces (`--mix-spaces`): one policy for
  envs of several spaces, a step's forwards those of its longest action;
- `graphs`: `mixed` with `--weights compiled`: on a GPU each forward shape is recorded as a
  CUDA graph and replayed (what `opengato suite` evaluates with there; the forward count then
  counts only the forwards run eagerly). On a CPU it compiles each shape: not a CPU path.

Every path plays the same episodes (same seeds, prompts, greedy actions; `grouped` batches
them differently, so its actions may differ by floating-point rounding), so the table also says
whether each path's per-episode records equal the first path's. Prompts come from `--collect` expert demonstrations per task, collected into
`--data-dir` when missing (resumable; `--collect 0` evaluates without prompts). Prints a
Markdown table with the commit, machine and command, and writes it (and the raw runs as JSON)
beside `--out`.

On this repository's 2-core CPU machine (the committed table in benchmarks/RESULTS.md):

    python benchmarks/eval_throughput.py --threads 1

At suite scale on a GPU machine (the 138 suite tasks x 20 episodes; the task-by-task path there takes
far longer than the others, so it is left out or measured once):

    python benchmarks/eval_throughput.py --tasks babyai,metaworld,classic --episodes 20 \\
        --device cuda --paths pool --repeats 1 --env-workers 16 --concurrent-tasks 32
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

DEFAULT_TASKS = (
    "classic/CartPole-v1,classic/Acrobot-v1,classic/MountainCar-v0,"
    "babyai/GoToRedBall,babyai/GoToObj,babyai/OpenRedDoor"
)
PATHS = {
    "here": "task after task, envs in the evaluating process (the default)",
    "workers": "a process per task, each with its own model (`--workers`)",
    "pool": "one model, envs in env workers, tasks at once (new)",
    "grouped": "as pool, a domain's tasks with equal spaces as one batch (new)",
    "mixed": "as grouped, tasks of any spaces as one batch (new)",
    "graphs": "as mixed, each forward shape a CUDA graph on a GPU (`--weights compiled`)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=DEFAULT_TASKS, help="`opengato eval --tasks` (any spec)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task")
    p.add_argument("--num-envs", type=int, default=0, help="envs per batch (0: --episodes)")
    p.add_argument("--checkpoint", default="random:gato-1m", help="checkpoint or random:<preset>")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"any of {', '.join(PATHS)}")
    p.add_argument("--workers", type=int, default=cores, help="processes of the `workers` path")
    p.add_argument("--env-workers", type=int, default=cores, help="env workers of `pool`")
    p.add_argument("--concurrent-tasks", type=int, default=8, help="tasks at once in `pool`")
    p.add_argument("--group-tasks", type=int, default=50, help="tasks per batch in `grouped`")
    p.add_argument("--repeats", type=int, default=3, help="runs of each path (median reported)")
    p.add_argument("--collect", type=int, default=2, help="demonstrations per task for prompts")
    p.add_argument("--data-dir", default="runs/eval-throughput/data")
    p.add_argument("--out", default="runs/eval-throughput/eval_throughput.md")
    return p.parse_args(argv)


def path_options(path: str, args: argparse.Namespace) -> dict:
    """The EvalConfig options that make `path`."""
    if path == "here":
        return {}
    if path == "workers":
        return {"workers": args.workers}
    pool = {"env_workers": args.env_workers, "concurrent_tasks": args.concurrent_tasks}
    if path == "pool":
        return pool
    grouped = {**pool, "group_tasks": args.group_tasks}
    if path == "grouped":
        return grouped
    mixed = {**grouped, "mix_spaces": True}
    return mixed if path == "mixed" else {**mixed, "weights": "compiled"}


def flags(options: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                    for k, v in options.items()) or "(defaults)"  # fmt: skip


def run_one(config: dict, out: str, log: str) -> None:
    """One timed `run_eval` (in a fresh spawned process); writes its timing and episodes."""
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)  # the eval's own output goes to the log
        os.dup2(f.fileno(), 2)
        import torch

        from opengato.agent.eval_config import EvalConfig
        from opengato.agent.evaluate import run_eval
        from opengato.model.gato import Gato

        forwards = [0, 0]  # forward passes of the acting model in this process, their rows
        next_logits = Gato.next_logits

        def counted(self, batch, *a, **k):
            forwards[0] += 1
            forwards[1] += batch.ids.shape[0]
            return next_logits(self, batch, *a, **k)

        Gato.next_logits = counted
        if config["device"].startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = run_eval(EvalConfig(**config))
        wall = time.perf_counter() - t0
    tasks = res["tasks"]
    Path(out).write_text(json.dumps({
        "wall_s": wall,
        "env_steps": sum(e["length"] for r in tasks.values() for e in r.get("episodes", [])),
        "task_errors": sorted(t for t, r in tasks.items() if "error" in r),
        "failed_episodes": sum(r.get("n_errors", 0) for r in tasks.values()),
        "forwards": forwards[0],
        "forward_rows": forwards[1],
        "episodes": {t: [[e["seed"], e["return"], e["length"], e["success"], e["error"] is None]
                         for e in r.get("episodes", [])] for t, r in tasks.items()},
        "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20
                        if config["device"].startswith("cuda") else None),
    }))  # fmt: skip


def timed_run(config: dict, work: Path, name: str) -> dict:
    """`run_one` in a fresh spawned process; its results."""
    import multiprocessing as mp

    out, log = work / f"{name}.json", work / f"{name}.log"
    proc = mp.get_context("spawn").Process(target=run_one, args=(config, str(out), str(log)))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or not out.exists():
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise RuntimeError(f"run {name} failed (exit code {proc.exitcode}):\n{tail}")
    return json.loads(out.read_text())


def machine_line(device: str) -> str:
    from opengato.bench_tables import machine

    m = machine()
    line = f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}"
    if device.startswith("cuda"):
        import torch

        line += f", GPU {torch.cuda.get_device_name(0)}"
    return line


def table(args: argparse.Namespace, runs: dict[str, list[dict]], n_tasks: int, header: dict) -> str:
    """The Markdown report: what ran where, then one row per path."""
    lines = [
        "## Evaluation throughput (benchmarks/eval_throughput.py)",
        "",
        f"- date: {header['date']}",
        f"- commit: `{header['commit']}`",
        f"- machine: {header['machine']}",
        f"- command: `{header['command']}`",
        f"- {n_tasks} tasks x {args.episodes} episodes, `{args.checkpoint}` on {args.device}, "
        f"batches of {args.num_envs} envs, greedy, prompts: "
        + (f"{args.collect} demonstrations per task" if args.collect else "none")
        + f", torch threads {args.threads or 'default'}; median of {args.repeats} runs",
        "",
        "| path | options | wall s | runs s | env steps | env steps/s | speed-up | "
        "same episodes | forward passes (rows each) | peak GPU MB |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    first = next(iter(runs.values()))
    base_wall = statistics.median(r["wall_s"] for r in first)
    for path, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        wall = statistics.median(walls)
        steps = rs[0]["env_steps"]
        same = all(r["episodes"] == first[0]["episodes"] for r in rs)
        gpu = max((r["peak_gpu_mb"] or 0) for r in rs)
        gpu = f"{gpu:,.0f}" if args.device.startswith("cuda") else "-"
        fw = rs[0]["forwards"]  # in the evaluating process: none in the `workers` path
        fw = f"{fw:,} ({rs[0]['forward_rows'] / fw:.1f})" if fw else "-"
        lines.append(
            f"| {path}: {PATHS[path]} | `{flags(path_options(path, args))}` | {wall:.1f} | "
            f"{' / '.join(f'{w:.1f}' for w in walls)} | {steps:,} | {steps / wall:,.0f} | "
            f"{base_wall / wall:.2f}x | {'yes' if same else 'NO'} | {fw} | {gpu} |"
        )
    errors = sorted({t for rs in runs.values() for r in rs for t in r["task_errors"]})
    if errors:
        lines += ["", f"Tasks that failed in some run: {', '.join(errors)}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    args.num_envs = args.num_envs or args.episodes
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if unknown := set(paths) - set(PATHS):
        raise SystemExit(f"unknown --paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    from opengato.files import git_commit
    from opengato.tasks import select

    tasks = select(args.tasks)[0]
    out = Path(args.out)
    work = out.parent / "runs"
    work.mkdir(parents=True, exist_ok=True)
    if args.collect:
        from opengato.data.collect import CollectConfig, run_collect

        collected = run_collect(CollectConfig(
            tasks=",".join(tasks), episodes=args.collect, random_episodes=1,
            data_dir=args.data_dir, workers=max(1, args.workers), episode_timeout_s=10.0,
        ))["tasks"]  # fmt: skip
        if missing := [t for t in tasks if not collected[t]["kept"]]:
            print(f"left out, no demonstration to prompt with: {', '.join(missing)}")
            tasks = [t for t in tasks if t not in missing]
    config = dict(checkpoint=args.checkpoint, tasks=tasks, episodes=args.episodes,
                  num_envs=args.num_envs, device=args.device, threads=args.threads,
                  data_dir=args.data_dir, prompt=bool(args.collect), bootstrap=100)  # fmt: skip
    header = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(short=True),
        "machine": machine_line(args.device),
        "command": "python benchmarks/eval_throughput.py " + shlex.join(argv or sys.argv[1:]),
    }
    runs: dict[str, list[dict]] = {p: [] for p in paths}
    for i in range(args.repeats):  # interleaved, so drifting machine load hits every path
        for p in paths:
            cfg = dict(config, **path_options(p, args), out=str(work / f"{p}-{i}.eval.json"))
            runs[p].append(timed_run(cfg, work, f"{p}-{i}"))
            r = runs[p][-1]
            print(f"{p} run {i + 1}/{args.repeats}: {r['wall_s']:.1f} s, "
                  f"{r['env_steps'] / r['wall_s']:,.0f} env steps/s", flush=True)  # fmt: skip
    text = table(args, runs, len(tasks), header)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"header": header, "args": vars(args),
                                                    "runs": runs}, indent=1))  # fmt: skip
    print(text)
    return text


if __name__ == "__main__":
    main()
