"""What becomes of one task's collected episodes: its scores, the filter, its Minari dataset.

`finish_job` runs in a collection worker (data/collect.py), once all of a task's episodes are
in: the process that hands out the jobs only writes `scores.json`. Finishing a task takes a
second or more (the env hash builds the task's env, Minari writes the episodes one by one),
and when the handing-out process did it for every task in turn, 14 workers waited on it: on an
H100 machine, 156 tasks took 6.3 minutes to collect, ~2.4 s a task, most of it spent there.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np

from opengato.data.episodes import Episode, write_minari
from opengato.data.generator import GENERATOR_VERSION, env_hash, generator_hash, random_env_task
from opengato.data.random_scores import FIELDS as RANDOM_FIELDS
from opengato.data.scores import filter_episodes
from opengato.seeds import RANDOM_SEED_START
from opengato.tasks import Task, get_task


@dataclass
class TaskSummary:
    task: str
    kept: int = 0
    dropped: int = 0
    failed: int = 0
    expert_success_rate: float | None = None
    expert_score: float | None = None
    random_score: float | None = None
    random_shipped: bool = False
    seconds: float = 0.0
    status: str = "collected"
    reasons: list[str] = field(default_factory=list)


def finish_job(job: tuple) -> tuple[TaskSummary, dict] | None:
    """Worker entry: `(task name, {"expert": [...], "random": [...]}, expert episodes
    attempted, first seed, random episodes asked for, data root, shipped random-score row or
    None)` -> the task's summary and its scores.json row, its dataset written; None, writing
    nothing, when the shipped row no longer matches the task's env (its random episodes must
    run)."""
    task_name, res, episodes, seed, random_episodes, root, row = job
    task = get_task(task_name)
    if row is not None and row["env_hash"] != env_hash(random_env_task(task)):
        return None
    return finish_task(task, res, (episodes, seed, random_episodes), root, row)


def finish_task(
    task: Task, res: dict, asked: tuple[int, int, int], root: Path, random_row: dict | None
) -> tuple[TaskSummary, dict]:
    """Score, filter and write one task's episodes (`asked`: expert episodes attempted, first
    seed, random episodes asked for; the random score from its episodes, or `random_row` when
    it ships). Returns the summary and the task's scores.json row, for the caller to save."""
    by_seed = itemgetter("seed")  # results arrive in any order
    ok = sorted((r for r in res["expert"] if r["error"] is None), key=by_seed)
    rnd = sorted((r for r in res["random"] if r["error"] is None), key=by_seed)
    summary = _score(task, sorted(res["expert"], key=by_seed), ok, rnd)
    if random_row is not None:
        random_row = {k: random_row[k] for k in RANDOM_FIELDS}
        summary.random_score, summary.random_shipped = random_row["random"], True
    demos = [_episode(task, r) for r in ok]
    if summary.expert_score is not None and summary.random_score is not None:
        kept, dropped = filter_episodes(demos, summary.expert_score, summary.random_score,
                                        task.metric)  # fmt: skip
    else:
        kept, dropped = demos, 0
    summary.kept, summary.dropped = len(kept), dropped
    if kept:
        meta = _collection_meta(task, asked, kept, summary, generator_hash(task))
        write_minari(task, kept, root, meta, overwrite=True)
    else:
        summary.status = "no episodes kept"
    return summary, _scores_entry(task, summary, ok, rnd, random_row)


def _score(task: Task, attempted: list[dict], ok: list[dict], rnd: list[dict]) -> TaskSummary:
    """A task's summary before filtering: failures (reported on stderr), the expert success
    rate over all attempted episodes, the mean expert and random returns."""
    failed = [r for r in attempted if r["error"] is not None]
    summary = TaskSummary(task.name, failed=len(failed))
    summary.reasons = [f"seed {r['seed']}: {r['error']}" for r in failed]
    for reason in summary.reasons:
        print(f"[collect] {task.name}: dropped {reason}", file=sys.stderr)
    if task.success_key is not None and attempted:
        summary.expert_success_rate = sum(bool(r["success"]) for r in ok) / len(attempted)
    summary.expert_score = float(np.mean([r["return"] for r in ok])) if ok else None
    summary.random_score = float(np.mean([r["return"] for r in rnd])) if rnd else None
    return summary


def _episode(task: Task, r: dict) -> Episode:
    return Episode(
        observations=r["observations"],
        actions=r["actions"],
        rewards=r["rewards"],
        terminated=r["terminated"],
        truncated=r["truncated"],
        seed=r["seed"],
        success=r["success"],
        task=task.name,
    )


def _collection_meta(
    task: Task, asked: tuple[int, int, int], kept: list[Episode], summary: TaskSummary, digest: str
) -> dict:
    """`opengato.json` of a collected task: how, by what code and from which seeds (the kept
    ones, and the whole attempted range `[seed, seed + episodes_requested)`, which
    `opengato eval` keeps its evaluation seeds out of)."""
    episodes, seed, random_episodes = asked
    return {
        "task": task.name,
        "generator_version": GENERATOR_VERSION,
        "generator_hash": digest,
        "expert": task.expert_name,
        "episodes_requested": episodes,
        "seed": seed,
        "random_episodes_requested": random_episodes,
        "random_seed": RANDOM_SEED_START + seed,
        "random_scores": "shipped" if summary.random_shipped else "measured",
        "seeds": [e.seed for e in kept],
        "returns": [e.episode_return for e in kept],
        "successes": [e.success for e in kept],
        "dropped_by_filter": summary.dropped,
        "failed": summary.reasons,
        "observation_convention": "observations have T+1 entries; actions, rewards T",
    }


def _scores_entry(
    task: Task, summary: TaskSummary, ok: list[dict], rnd: list[dict], random_row: dict | None
) -> dict:
    """A task's row of scores.json; its random part is `random_row` when that ships."""
    random_success = (
        sum(bool(r["success"]) for r in rnd) / len(rnd)
        if rnd and task.success_key is not None
        else None
    )
    entry = {
        "expert": summary.expert_score,
        "random": summary.random_score,
        "expert_success_rate": summary.expert_success_rate,
        "random_success_rate": random_success,
        "metric": task.metric,
        "expert_episodes": len(ok),
        "expert_failed": summary.failed,  # failed or timed out: left out of the reference
        "random_episodes": len(rnd),
    }
    return {**entry, **(random_row or {})}
