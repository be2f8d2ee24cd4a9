"""Which seeds train and which evaluate: two disjoint streams, by construction.

A start state is a pure function of an environment's reset seed. If evaluation reset its
episodes with seeds that a demonstration used, a score would measure recall of seen episodes,
not a policy. So:

- `opengato collect` gives expert episode i of a task the seed `seed + i`, and refuses any
  `seed + episodes` past `RANDOM_SEED_START`; its random-policy reference episodes use
  `RANDOM_SEED_START + seed + i` (they are never training data, but need not share seeds with
  either stream).
- `opengato eval` resets episode i with `start_seed + i`, `start_seed = EVAL_SEED_START` by
  default, and refuses seeds that a task's recorded demonstrations used (`check_held_out`).

A held-out seed is not always a held-out start state: an env may offer few starts (a small
BabyAI level has a few dozen layouts). So evaluation also compares each episode's first
observation with its task's demonstrations' (`start_key`) and counts the ones it has seen
(docs/evaluation.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

COLLECT_SEED_START = 0
"""Default first seed of expert demonstrations."""
RANDOM_SEED_START = 500_000
"""Offset of the random-policy reference episodes' seeds."""
EVAL_SEED_START = 1_000_000
"""Default first seed of evaluation episodes; demonstrations never reach it."""


class SeenSeedsError(ValueError):
    """Evaluation seeds that demonstrations of the same task used."""


def training_seeds(meta: dict) -> set[int]:
    """Every seed a task's collection may have trained on: the recorded kept seeds, and the
    whole attempted range `[seed, seed + episodes_requested)` (dropped episodes included)."""
    seeds = {int(s) for s in meta.get("seeds") or [] if s is not None}
    if meta.get("seed") is not None and meta.get("episodes_requested") is not None:
        seeds |= set(range(int(meta["seed"]), int(meta["seed"]) + int(meta["episodes_requested"])))
    return seeds


def overlap(eval_seeds: Iterable[int], meta: dict) -> list[int]:
    """The evaluation seeds that a task's demonstrations (its collection metadata) used.

    >>> overlap(range(5, 10), {"seed": 0, "episodes_requested": 8, "seeds": [0, 1, 7]})
    [5, 6, 7]
    """
    used = training_seeds(meta)
    return sorted(s for s in eval_seeds if s in used)


def start_key(space, obs: Any) -> str:
    """A hash of an episode's first observation `obs` of `space`: every number (float64, from
    `flat_numbers`, so the env's values and a dataset's float32 copy of them agree) and every
    text of it."""
    from opengato.tokens.spaces import flat_numbers, texts

    h = hashlib.sha256(flat_numbers(space, obs).tobytes())
    h.update(repr(texts(space, obs)).encode())
    return h.hexdigest()[:16]
