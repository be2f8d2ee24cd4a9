"""The expert and random score of every task (`<data root>/scores.json`), and the paper's
filter of demonstrations relative to them.

Decisions (departures from, or readings of, the paper):
- Filtering: the paper drops episodes whose return is below 80% of the expert return. With
  negative returns (Pendulum, MountainCar, Acrobot) "80% of expert" is ill-defined, so we
  keep an episode iff `(ret - random) >= 0.8 * (expert - random)`, i.e. 80% of the way from
  the random score to the expert score. Tasks scored by success rate (Meta-World: episodes
  stop 10 steps after success, so returns of different lengths do not compare) keep an
  episode iff it succeeded.
- The expert score is the mean return (and success rate) over all collected expert episodes
  that finished, before filtering (100 by default); the random score is the mean over
  uniformly random episodes (100 by default). Collection computes both (data/collect.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opengato.data.episodes import Episode
from opengato.data.root import DatasetError, data_root
from opengato.files import atomic_write_json

FILTER_FRACTION = 0.8


def keep_episode(
    ret: float, expert: float, random: float, fraction: float = FILTER_FRACTION
) -> bool:
    """The paper's filter, relative to random: keep iff `ret - random >= fraction * (expert - random)`.

    >>> keep_episode(-150.0, expert=-140.0, random=-1200.0)
    True
    >>> keep_episode(-1000.0, expert=-140.0, random=-1200.0)
    False
    """
    if expert <= random:  # a degenerate expert: nothing to measure against
        return True
    return ret - random >= fraction * (expert - random)


def filter_episodes(
    episodes: list[Episode], expert: float, random: float, metric: str = "return"
) -> tuple[list[Episode], int]:
    """Drop episodes below 80% of expert (see `keep_episode`), or unsuccessful ones when
    the task is scored by success rate. Returns (kept, number dropped)."""
    if metric == "success_rate":
        kept = [e for e in episodes if e.success]
    else:
        kept = [e for e in episodes if keep_episode(e.episode_return, expert, random)]
    return kept, len(episodes) - len(kept)


def load_scores(data_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """`scores.json`: task -> {"expert", "random" (mean returns over the episodes that finished),
    "expert_success_rate", "random_success_rate", "metric", "expert_episodes", "expert_failed"
    (episodes that failed or timed out, left out of the means; absent before 2026-11-29),
    "random_episodes"}."""
    path = data_root(data_dir) / "scores.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"corrupt scores table {path}: {e}") from e


def save_scores(data_dir: str | Path | None, updates: dict[str, dict]) -> None:
    """Merge `updates` (task -> entry, as in `load_scores`) into `scores.json`."""
    scores = load_scores(data_dir)
    scores.update(updates)
    atomic_write_json(data_root(data_dir) / "scores.json", scores, sort_keys=True)
