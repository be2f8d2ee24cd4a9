"""Evaluation: roll a checkpoint out on tasks, normalise scores, aggregate (docs/method.md section 6, docs/evaluation.md).

`opengato eval runs/x` runs `episodes` rollouts per task (episode i resets its env with seed
`start_seed + i`, by default from `seeds.EVAL_SEED_START`, a stream no demonstration uses;
seeds that a task's demonstrations used are refused) in lock-step batches of `num_envs` envs
through one `GatoPolicy`: task after task in this process (the default), in `--workers`
processes that each load the model, or, with `--env-workers` / `--concurrent-tasks`, several
tasks at once by the one model here while worker processes step their envs. It writes one JSON
file: per-task returns, success rates, lengths and the expert-normalised score
`100 * (score - random) / (expert - random)`, per-domain and overall mean / median / IQM with
bootstrap 95% confidence intervals, and the resolved config, checkpoint hash, seeds, git commit
and timestamps. The file is rewritten atomically after every task, so `--resume` continues a
killed evaluation without redoing finished tasks. The episodes themselves are played by
`opengato.agent.rollout`, and the scores computed by `opengato.agent.scores`; this module
chooses the tasks, checks seeds, prompts and reference scores before any rollout, and writes
the results.

Baselines: `opengato eval random:gato-tiny` evaluates a randomly initialised model of a preset
(seeded by `start_seed`), and `opengato eval uniform` samples actions uniformly from the action
space (what the scores table's `random` column measures, so it should score about 0).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from opengato.agent.concurrent import evaluate_concurrently
from opengato.agent.eval_config import EvalConfig
from opengato.agent.rollout import evaluate_task
from opengato.agent.scores import aggregate_results, normalize_task, score_warnings
from opengato.files import atomic_write_json, git_commit
from opengato.model.compiled import decoding_stats
from opengato.seeds import EVAL_SEED_START
from opengato.workers import worker_pool

RESULTS_VERSION = 2


# --------------------------------------------------------------------------- which tasks


def trained_tasks(checkpoint_config: dict) -> list[str]:
    """The control tasks of a checkpoint's training config (`train.tasks`, corpora left out)."""
    from opengato.tasks import select

    spec = (checkpoint_config.get("train") or {}).get("tasks")
    return select(spec)[0] if spec else []


def eval_tasks(cfg: EvalConfig, checkpoint_config: dict) -> list[str]:
    """The control tasks to evaluate: `--tasks`, else those the checkpoint was trained on, else
    the default demo tasks; none with `--episodes 0` (captions and answers only)."""
    from opengato.tasks import DEFAULT_TASKS, select

    if cfg.episodes < 0:
        raise ValueError(f"--episodes must be >= 0 (0: no rollouts), not {cfg.episodes}")
    if cfg.episodes == 0:
        if not (cfg.captions or cfg.qa) or cfg.checkpoint == "uniform":
            raise ValueError("--episodes 0 plays no episodes: it scores a model's captions "
                             "(--captions) and answers (--qa) alone; give one of them and a "
                             "checkpoint with a model, or --episodes >= 1")  # fmt: skip
        return []
    if cfg.tasks:
        tasks = select(cfg.tasks)[0]
    else:
        tasks = trained_tasks(checkpoint_config) or list(DEFAULT_TASKS)
    if not tasks:
        raise ValueError(f"--tasks {','.join(cfg.tasks)!r} names no control task to evaluate")
    return tasks


# --------------------------------------------------------------------------- the verb


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def task_job(args: tuple[str, EvalConfig]) -> dict:
    """One task's results in a worker process (which loads the model itself); an exception
    becomes the task's `error`."""
    import torch

    task_name, cfg = args
    torch.set_num_threads(cfg.threads or 1)
    try:
        return evaluate_task(task_name, cfg)
    except Exception:
        return {"task": task_name, "error": traceback.format_exc()}


def _save_gif(result: dict, out: Path) -> None:
    frames = result.pop("frames", None)
    if not frames:
        return
    import imageio.v2 as imageio

    path = out.parent / "rollouts" / (result["task"].replace("/", "__") + ".gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, [np.asarray(f, np.uint8) for f in frames], duration=0.05, loop=0)
    result["gif"] = str(path.relative_to(out.parent))


RESUME_MAY_CHANGE = (
    "resume",
    "workers",
    "env_workers",
    "concurrent_tasks",
    "threads",
    "device",
    "out",
    "record",
    "max_minutes",
)
"""EvalConfig fields that a `--resume` may change; any other change refuses to resume."""


def check_parallelism(cfg: EvalConfig) -> None:
    """Refuse settings of the worker options that cannot run together."""
    if min(cfg.workers, cfg.concurrent_tasks, cfg.group_tasks) < 1 or cfg.env_workers < 0:
        raise ValueError(
            "--workers, --concurrent-tasks and --group-tasks must be >= 1, --env-workers >= 0"
        )
    if cfg.workers > 1 and (cfg.env_workers or cfg.concurrent_tasks > 1 or cfg.group_tasks > 1):
        raise ValueError(
            "--workers (a process per task, each loading the model) and --env-workers / "
            "--concurrent-tasks (one model here, envs stepped in worker processes) are two ways "
            "to use the cores; choose one"
        )
    if cfg.mix_spaces and (cfg.group_tasks < 2 or cfg.overflow != "slide"):
        raise ValueError("--mix-spaces mixes the tasks of a group (--group-tasks > 1), through "
                         "a ragged KV cache (--overflow slide)")  # fmt: skip
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise ValueError(f"--max-minutes must be > 0, got {cfg.max_minutes:g}")


def check_out_writable(out: Path) -> None:
    """Fail before any rollout when the results file cannot be written."""
    probe = out.parent / f".{out.name}.probe-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write the results file {out}: {e.strerror or e}") from e


def check_seeds(tasks: list[str], cfg: EvalConfig, data_dirs: list[str | None]) -> list[str]:
    """Refuse evaluation seeds that a task's demonstrations used (in any of `data_dirs`), unless
    `cfg.allow_seen_seeds`. Returns warnings: tasks whose demonstrations were not found, so their
    seeds could not be checked, and every overlap that was allowed."""
    from opengato.data.episodes import read_collection_meta
    from opengato.seeds import SeenSeedsError, overlap

    eval_seeds = range(cfg.start_seed, cfg.start_seed + cfg.episodes)
    warnings, seen = [], []
    for name in tasks:
        metas = [m for d in dict.fromkeys(data_dirs) if (m := read_collection_meta(name, d))]
        if not metas:
            warnings.append(f"{name}: no collection metadata found, so its evaluation seeds "
                            "could not be checked against its demonstrations' seeds")  # fmt: skip
        hits = sorted({s for m in metas for s in overlap(eval_seeds, m)})
        if hits:
            seen.append(f"{name}: {len(hits)} of {cfg.episodes} evaluation seeds "
                        f"({hits[0]}..{hits[-1]}) were used by its demonstrations")  # fmt: skip
    if seen and not cfg.allow_seen_seeds:
        raise SeenSeedsError(
            "evaluation would replay training start states: "
            + "; ".join(seen)
            + f". Use held-out seeds (the default --start-seed {EVAL_SEED_START}), or pass "
            "--allow-seen-seeds to measure recall of seen episodes on purpose"
        )
    return warnings + [f"SEEN SEEDS (allowed): {m}" for m in seen]


def check_prompts(tasks: list[str], cfg: EvalConfig) -> None:
    """Refuse, before any rollout, tasks without demonstrations to prompt with."""
    from opengato.data.episodes import read_collection_meta, task_dataset_dir
    from opengato.data.root import DatasetError, data_root
    from opengato.tasks import get_task

    def found(name: str) -> bool:  # a task with a dataset of its own has no collection metadata
        task = get_task(name)
        if task.dataset:
            return task_dataset_dir(task).exists()
        return read_collection_meta(name, cfg.data_dir) is not None

    if not cfg.prompt or cfg.checkpoint == "uniform":
        return
    missing = [t for t in tasks if not found(t)]
    if missing:
        raise DatasetError(
            f"no demonstrations to prompt with under {data_root(cfg.data_dir)} for: "
            f"{', '.join(missing)}. Pass the --data-dir they were collected in, run "
            f"`opengato collect --tasks {','.join(missing)}`, or evaluate without prompts "
            "(--no-prompt)"
        )


def _defaults(cls: type) -> dict[str, Any]:
    """The default of each field of a dataclass that has one."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def _resume_results(out: Path, results: dict, cfg: EvalConfig) -> None:
    """Keep the finished tasks of `out` when it was made with the same checkpoint and the same
    evaluation protocol; refuse otherwise, naming what changed."""
    old = json.loads(out.read_text())
    if old.get("checkpoint", {}).get("sha256") != results["checkpoint"]["sha256"]:
        raise ValueError(f"{out} was made with another checkpoint; not resuming")
    # An option the file predates counts as having had its default.
    was = {**_defaults(EvalConfig), **old.get("config", {})}
    now = results["config"]
    changed = [f"{k}: {was.get(k)!r} -> {v!r}" for k, v in now.items()
               if k not in RESUME_MAY_CHANGE and k != "tasks" and was.get(k) != v]  # fmt: skip
    if changed:
        raise ValueError(f"{out} was made with another evaluation configuration ("
                         + "; ".join(changed) + "); not resuming (use another --out)")  # fmt: skip
    results["tasks"] = {t: r for t, r in old.get("tasks", {}).items() if "error" not in r}
    results["started"] = old.get("started", results["started"])


def new_results(cfg: EvalConfig, checkpoint_config: dict, warnings: list[str]) -> dict[str, Any]:
    """The results file before any task: what is evaluated, how, and from which code."""
    from opengato.model.checkpoint import checkpoint_hash

    digest = checkpoint_hash(cfg.checkpoint)
    seen = any(w.startswith("SEEN SEEDS") for w in warnings)
    unchecked = any("could not be checked" in w for w in warnings)  # no collection metadata
    return {
        "version": RESULTS_VERSION,
        "config": asdict(cfg),
        "checkpoint": {"path": cfg.checkpoint, "sha256": digest, "config": checkpoint_config},
        "git_commit": git_commit(),
        "seeds": {
            "start_seed": cfg.start_seed,
            "episode_seeds": [cfg.start_seed, cfg.start_seed + cfg.episodes - 1],
            "held_out": False if seen else None if unchecked else True,
        },
        "warnings": warnings,
        "started": _now(),
        "tasks": {},
    }


def run_eval(cfg: EvalConfig) -> dict:
    """`opengato eval`: evaluate every task, writing `cfg.out` after each; returns the results."""
    from opengato.data.scores import load_scores
    from opengato.model.checkpoint import load_agent
    from opengato.tasks import get_task

    out = Path(cfg.out)
    check_parallelism(cfg)
    check_out_writable(out)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    agent = load_agent(cfg.checkpoint, cfg.device, cfg.start_seed, cfg.weights == "int8")
    model, tokenizer, checkpoint_config = agent
    tasks = eval_tasks(cfg, checkpoint_config)
    train_dir = (checkpoint_config.get("train") or {}).get("data_dir")
    warnings = check_seeds(tasks, cfg, [cfg.data_dir, train_dir])
    check_prompts(tasks, cfg)
    scores = load_scores(cfg.data_dir)
    warnings += score_warnings(tasks, scores, cfg.data_dir)
    if cfg.weights == "int8" and model is not None:
        warnings.append("INT8 WEIGHTS: acted with int8 block matmuls (--weights int8), not the "
                        "trained model's own precision; not comparable to the paper's numbers")  # fmt: skip
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    results = new_results(cfg, checkpoint_config, warnings)
    if cfg.resume and out.exists():
        _resume_results(out, results, cfg)
    todo = [t for t in tasks if t not in results["tasks"]]

    def finish(result: dict) -> None:
        if "error" not in result:
            _save_gif(result, out)
            normalize_task(result, scores, get_task(result["task"]))
        results["tasks"][result["task"]] = result
        # the intervals over episodes are left to the end (0.1 s for 147 tasks, each time)
        results["aggregates"] = aggregate_results(results["tasks"], cfg.bootstrap,
                                                  cfg.start_seed, episodes=False)  # fmt: skip
        results["updated"] = _now()
        atomic_write_json(out, results)

    unfinished = _run_tasks(todo, cfg, agent, finish)
    if unfinished:
        results["unfinished"] = unfinished
        w = (f"{len(unfinished)} of {len(tasks)} tasks not evaluated within --max-minutes "
             f"{cfg.max_minutes:g}, left out of the scores (--resume evaluates them): "
             + ", ".join(unfinished))  # fmt: skip
        results["warnings"].append(w)
        print(f"WARNING: {w}", file=sys.stderr)
    if seen := [f"{t} {r['seen_starts']}/{r['n_episodes']}"
                for t, r in results["tasks"].items() if r.get("seen_starts")]:  # fmt: skip
        w = ("START STATES SEEN IN TRAINING: episodes whose first observation a demonstration "
             "of the task began with (held-out seeds, a repeated start): " + ", ".join(seen))  # fmt: skip
        results["warnings"].append(w)
        print(f"WARNING: {w}", file=sys.stderr)
    order = {t: i for i, t in enumerate(tasks)}  # concurrent tasks finish in any order
    results["tasks"] = dict(
        sorted(results["tasks"].items(), key=lambda kv: order.get(kv[0], len(order)))
    )
    if cfg.captions and model is not None:
        from opengato.agent.language import evaluate_captions

        results["captions"] = evaluate_captions(model, tokenizer, cfg.data_dir, cfg.caption_limit)
    if cfg.qa and model is not None:
        from opengato.agent.language import evaluate_answers

        results["qa"] = evaluate_answers(model, tokenizer, cfg.data_dir, cfg.qa_limit)
    results["aggregates"] = aggregate_results(results["tasks"], cfg.bootstrap, cfg.start_seed)
    results["finished"] = _now()
    if model is not None and (decoding := decoding_stats(model)) is not None:
        results["decoding"] = decoding  # what compiled decoding cost: graphs recorded, seconds
        print(format_decoding(decoding))
    atomic_write_json(out, results)
    print(format_results(results))
    return results


def format_decoding(stats: dict) -> str:
    """One line on compiled decoding (`--weights compiled`/`auto`): how many graphs it recorded
    and in how long, and how many forwards replayed them or ran eagerly."""
    what = "CUDA graphs" if stats["cuda"] else "compiled shapes"
    return (
        f"decoding: {stats['recorded']:,} {what} recorded in {stats['record_s']:.1f} s; "
        f"{stats['replayed']:,} forwards replayed them, {stats['eager']:,} ran eagerly"
    )


def _run_tasks(
    todo: list[str], cfg: EvalConfig, agent, finish: Callable[[dict], None]
) -> list[str]:
    """Evaluate each task of `todo` and hand its result to `finish`: in `cfg.workers` spawned
    processes (each loads the model) when there are several; with `agent` here, several tasks
    at once over env workers (`cfg.env_workers`, `cfg.concurrent_tasks`); else here, task after
    task. Returns the tasks that `cfg.max_minutes` left unfinished."""
    from tqdm import tqdm

    deadline = None if cfg.max_minutes is None else time.monotonic() + cfg.max_minutes * 60
    bar = tqdm(total=len(todo) * cfg.episodes, desc="eval", unit="ep")
    unfinished: list[str] = []
    if cfg.workers > 1 and len(todo) > 1:
        with worker_pool(min(cfg.workers, len(todo))) as pool:
            jobs = {pool.submit(task_job, (t, cfg)): t for t in todo}
            for job in as_completed(jobs):
                if job.cancelled():
                    continue
                finish(job.result())
                bar.update(cfg.episodes)
                if deadline is not None and time.monotonic() > deadline and not unfinished:
                    unfinished = [t for j, t in jobs.items() if j.cancel()]  # not yet started
    elif cfg.env_workers > 0 or cfg.concurrent_tasks > 1 or cfg.group_tasks > 1:
        left = set(evaluate_concurrently(todo, cfg, agent, finish, bar.update, deadline))
        unfinished = [t for t in todo if t in left]
    else:
        for i, t in enumerate(todo):
            if deadline is not None and time.monotonic() > deadline:
                unfinished = todo[i:]
                break
            bar.set_postfix_str(t)
            try:
                result = evaluate_task(t, cfg, agent, progress=bar.update)
            except Exception:
                result = {"task": t, "error": traceback.format_exc()}
            finish(result)
    bar.close()
    return unfinished


def format_results(results: dict) -> str:
    """A plain-text table of per-task scores and the aggregates, then the caption and answer
    scores (or why they were not scored) and the warnings."""
    head = f"{'task':<40} {'return':>10} {'success':>8} {'norm':>8} {'failed':>7}"
    lines = [head] if results["tasks"] else []  # `--episodes 0`: the language scores alone
    for name, r in sorted(results["tasks"].items()):
        if "error" in r:
            lines.append(f"{name:<40} error: {r['error'].strip().splitlines()[-1]}")
            continue
        ret = "-" if r["mean_return"] is None else f"{r['mean_return']:.2f}"
        suc = "-" if r["success_rate"] is None else f"{r['success_rate']:.2f}"
        ns = "-" if r.get("normalized_score") is None else f"{r['normalized_score']:.1f}"
        failed = f"{r.get('n_errors', 0)}/{r.get('n_episodes', 0)}"
        lines.append(f"{name:<40} {ret:>10} {suc:>8} {ns:>8} {failed:>7}")
    agg = results.get("aggregates", {}).get("overall", {})
    if agg.get("n_tasks"):
        ep = agg.get("iqm_ci_episodes")  # None in results written before it
        tried = len(results["tasks"]) + len(results.get("unfinished", []))  # scored or not
        of = f" scored of {tried}" if tried > agg["n_tasks"] else ""
        lines.append(
            f"overall ({agg['n_tasks']} tasks{of}): mean {agg['mean']:.1f}, median {agg['median']:.1f}, "
            f"IQM {agg['iqm']:.1f} [{agg['iqm_ci'][0]:.1f}, {agg['iqm_ci'][1]:.1f}] over tasks"
            + (f", [{ep[0]:.1f}, {ep[1]:.1f}] over episodes" if ep else "")
            + f"; >=50%: {agg['tasks_ge_50']}, >=80%: {agg['tasks_ge_80']}"
        )
    for key, name in (("captions", "captions"), ("qa", "answers to held-out questions")):
        scores = results.get(key) or {}
        if "error" in scores:
            lines.append(f"{name}: not scored ({scores['error']})")
        elif scores:
            lines.append(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()
                                                 if isinstance(v, float)))  # fmt: skip
    lines += [f"WARNING: {w}" for w in results.get("warnings", [])]
    return "\n".join(lines)
