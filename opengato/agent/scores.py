"""Scores: expert-normalised scores and their aggregates (docs/method.md section 6).

A task's score is its mean return, or its success rate for tasks measured by success, and its
normalised score is `100 * (score - random) / (expert - random)` with the random and expert
references of the scores table (`opengato collect` writes it). Over tasks: mean, median and
interquartile mean (IQM), and the number of tasks at or above 50% and 80% of expert. Each
statistic has two percentile-bootstrap 95% intervals that answer different questions:
`<stat>_ci` resamples the tasks (how much the figure depends on which tasks were picked: wide
for a dozen tasks that differ), `<stat>_ci_episodes` keeps the tasks and resamples each task's
episodes (how sure the figure is for these tasks and these weights: rliable's stratified
bootstrap, with episodes in place of runs). `score_warnings` says where a task's references
cannot be trusted as they stand.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def normalized_score(score: float, random: float, expert: float) -> float | None:
    """100 * (score - random) / (expert - random); None when the expert does not beat random
    (expert <= random: no scale, or one that would turn worse than random into a high score,
    the references collection also refuses: data/scores.py).

    >>> normalized_score(75.0, 50.0, 100.0)
    50.0
    >>> normalized_score(0.0, 10.0, 5.0) is None
    True
    """
    if expert is None or random is None or expert <= random or math.isclose(expert, random):
        return None
    return 100.0 * (score - random) / (expert - random)


def iqm(x: np.ndarray, axis: int = -1) -> float | np.ndarray:
    """Interquartile mean along `axis`: the mean of the middle 50% (drops int(n/4) values at
    each end, as `scipy.stats.trim_mean(x, 0.25)` and rliable do); a float for 1-D `x`.

    >>> iqm(np.arange(1, 9))
    4.5
    """
    x = np.sort(np.asarray(x, np.float64), axis=axis)
    n = x.shape[axis]
    k = int(0.25 * n)
    out = np.take(x, np.arange(k, n - k), axis=axis).mean(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


STATISTICS = {"mean": np.mean, "median": np.median, "iqm": iqm}


def resample(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """`n_boot` resamples of the values of x with replacement, (n_boot, len(x)), drawn from a
    generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    return x[rng.integers(0, len(x), size=(n_boot, len(x)))]


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of bootstrap `values` (their percentiles)."""
    a = (1.0 - level) / 2.0
    return float(np.quantile(values, a)), float(np.quantile(values, 1.0 - a))


def bootstrap_ci(
    x: np.ndarray, stat, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `stat(x)`, resampling the values of x (tasks)
    with replacement `n_boot` times with a seeded generator. `stat(samples, axis=1)` computes
    the statistic of every resample at once (np.mean, np.median and `iqm` do)."""
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return (math.nan, math.nan)
    return percentile_interval(stat(resample(x, n_boot, seed), axis=1), level)


def aggregate(
    scores: list[float],
    n_boot: int = 2000,
    seed: int = 0,
    episode_means: list[np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Mean, median and IQM of normalised scores with bootstrap 95% CIs over tasks, and the
    number of tasks at or above 50% and 80% of expert. With `episode_means` (per task, the
    means of `n_boot` resamples of its episodes' normalised scores: `episode_bootstrap`), also
    `<stat>_ci_episodes`, the tasks kept and their episodes resampled (None when a task has no
    episode records)."""
    keep = [i for i, s in enumerate(scores) if s is not None]
    x = np.asarray([scores[i] for i in keep], np.float64)
    out: dict[str, Any] = {"n_tasks": len(x)}
    # One set of resamples for every statistic: what `bootstrap_ci` with this seed draws for each.
    samples = resample(x, n_boot, seed) if len(x) else None
    within = None
    if episode_means is not None and len(x):
        per_task = [episode_means[i] for i in keep]
        if all(m is not None for m in per_task):
            within = np.stack(per_task, axis=1)  # (n_boot, tasks)
    for name, fn in STATISTICS.items():
        out[name] = float(fn(x)) if len(x) else None
        out[f"{name}_ci"] = list(percentile_interval(fn(samples, axis=1))) if len(x) else None
        if episode_means is not None:
            ci = None if within is None else list(percentile_interval(fn(within, axis=1)))
            out[f"{name}_ci_episodes"] = ci
    out["tasks_ge_50"] = int(np.sum(x >= 50.0))
    out["tasks_ge_80"] = int(np.sum(x >= 80.0))
    return out


def episode_bootstrap(result: dict, n_boot: int, seed: int) -> np.ndarray | None:
    """The means of `n_boot` resamples of a normalised task's episodes' normalised scores."""
    values = normalized_episodes(result)
    if values is None or not len(values):
        return None
    return resample(values, n_boot, seed).mean(axis=1)


def aggregate_results(
    tasks: dict[str, dict], n_boot: int = 2000, seed: int = 0, episodes: bool = True
) -> dict:
    """{"overall": aggregate, "domains": {domain: aggregate}} over the tasks' normalised scores;
    with `episodes`, the intervals with each task's episodes resampled too (`aggregate`)."""
    by_domain: dict[str, tuple[list[float], list]] = {}
    for i, r in enumerate(tasks.values()):
        if r.get("normalized_score") is not None:
            scores, means = by_domain.setdefault(r["domain"], ([], []))
            scores.append(r["normalized_score"])
            means.append(episode_bootstrap(r, n_boot, seed + 1 + i) if episodes else None)
    every = [s for v, _ in by_domain.values() for s in v]
    every_means = [m for _, v in by_domain.values() for m in v] if episodes else None
    return {
        "overall": aggregate(every, n_boot, seed, every_means),
        "domains": {
            d: aggregate(v, n_boot, seed, m if episodes else None)
            for d, (v, m) in sorted(by_domain.items())
        },
    }


def episode_scores(result: dict, random: float | None) -> np.ndarray | None:
    """Per episode, what the task's score is the mean of: success (1 or 0; an episode that ended
    in an error is no success) for a task measured by success, else its return. An episode that
    ended in an error (the env raised, or returned a non-finite observation or reward: often the
    agent driving a simulation unstable) counts no more than the random policy's mean return
    `random`: leaving it out would score only the episodes that went well, and its return up to
    the error can beat a whole episode's (MountainCar loses 1 a step). None without episode
    records."""
    episodes = result.get("episodes")
    if not episodes:
        return None
    if result["metric"] == "success_rate":
        return np.array(
            [e.get("error") is None and bool(e.get("success")) for e in episodes], float
        )
    returns = [e["return"] if e.get("error") is None or random is None else min(e["return"], random)
               for e in episodes]  # fmt: skip
    return np.array(returns, np.float64)


def normalized_episodes(result: dict) -> np.ndarray | None:
    """A normalised task's episodes' normalised scores (their mean is its `normalized_score`)."""
    values = episode_scores(result, result.get("random"))
    if values is None or result.get("normalized_score") is None:
        return None
    return 100.0 * (values - result["random"]) / (result["expert"] - result["random"])


def normalize_task(result: dict, scores: dict[str, dict], task) -> dict:
    """Add `score`, `random`, `expert` and `normalized_score` from the scores table. The score
    is the mean of `episode_scores` (the result's `success_rate` or `mean_return` without
    episode records)."""
    entry = scores.get(task.name) or {}
    twin = scores.get(task.scores_from) if task.scores_from else None
    if result["metric"] == "success_rate":
        score = result["success_rate"]
        key_e, key_r = "expert_success_rate", "random_success_rate"
    else:
        score = result["mean_return"]
        key_e, key_r = "expert", "random"
    expert = entry.get(key_e)
    random = entry.get(key_r, (twin or {}).get(key_r))
    if random is None and twin is not None:
        random = twin.get(key_r)
    values = episode_scores(result, random)
    if values is not None:
        score = float(values.mean())
    result.update(score=score, expert=expert, random=random)
    result["normalized_score"] = (
        normalized_score(score, random, expert) if None not in (score, random, expert) else None
    )
    return result


def unscored_by_domain(results: dict) -> dict[str, int]:
    """Per domain, the tasks of an evaluation without a score because they failed (`error`), a
    time limit left them unfinished (`unfinished`), or they have no normalised score (no
    references in the scores table, or an expert that does not beat random): they count among
    the tasks that did not reach a threshold (the report's shares, Figure 5 per domain)."""
    out: dict[str, int] = {}
    failed = [
        (n, r.get("domain"))
        for n, r in results.get("tasks", {}).items()
        if "error" in r or r.get("normalized_score") is None
    ]
    for name, domain in failed + [(n, None) for n in results.get("unfinished", [])]:
        domain = domain or _domain_of(name)
        out[domain] = out.get(domain, 0) + 1
    return out


def _domain_of(name: str) -> str:
    from opengato.tasks import get_task

    try:
        return get_task(name).domain
    except Exception:  # not registered in this process: the name's suite
        return name.split("/")[0]


MIN_REFERENCE_EPISODES = 100
"""Fewer reference episodes than this behind a task's expert or random score get a warning."""


def score_warnings(tasks: list[str], scores: dict[str, dict], data_dir: str | None) -> list[str]:
    """Loud warnings for tasks that cannot be normalised, whose reference scores rest on
    fewer than MIN_REFERENCE_EPISODES episodes, or were measured by other code or package
    versions than the installed ones."""
    from opengato.data.episodes import collected_by_other_code
    from opengato.data.root import data_root

    if not scores:
        return [f"no scores table at {data_root(data_dir) / 'scores.json'}: no task can be "
                "normalised (run `opengato collect` or pass --data-dir)"]  # fmt: skip
    out, stale = [], []
    for name in tasks:
        entry = scores.get(name)
        if entry is None:
            out.append(f"{name}: not in the scores table, so it has no normalised score")
            continue
        for side in ("expert", "random"):
            n = entry.get(f"{side}_episodes") or 0
            failed = entry.get(f"{side}_failed") or 0  # the expert's, since 2026-11-29
            if failed:
                out.append(f"{name}: the {side} score leaves out the {failed} of its episodes "
                           "that failed or timed out: it describes the seeds it finished")  # fmt: skip
            elif n < MIN_REFERENCE_EPISODES:
                out.append(f"{name}: the {side} score rests on {n} episodes "
                           f"(< {MIN_REFERENCE_EPISODES}); collect again with more")  # fmt: skip
        if collected_by_other_code(name, data_dir):
            stale.append(name)
    if stale:
        out.append(f"STALE REFERENCES: {len(stale)} tasks' expert and random scores come from "
                   "data that other code or package versions collected (see `opengato collect`: "
                   "their generator hash is not the installed env's), so they may not hold for "
                   "the env played here; collect them again: " + ", ".join(stale))  # fmt: skip
    return out
