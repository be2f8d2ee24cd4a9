"""The shipped random-policy scores: every built-in task's random score, measured once.

A task's random score is the mean return (and success rate) of 100 uniformly random episodes
with seeds `RANDOM_SEED_START + i` (opengato/seeds.py). Nothing trained enters it: it is a
property of the environment, yet it was most of the cost of collection. A random episode rarely
ends early, so a Meta-World one runs all 500 steps (191-386 ms on one core, against 53-62 ms for
an expert episode that succeeds and stops), and 100 of them per task were ~70% of Meta-World's
collection time.

So `random_scores.json`, next to this file, holds each task's row as `opengato collect`
measured it, keyed by the hash of what shapes a random episode (`generator.env_hash`: the
episode runner, opengato's wrappers, the env packages' versions). `opengato collect` copies a
row instead of running the episodes when the task's hash matches and the settings are the
defaults (`--seed 0 --random-episodes 100`); the numbers are the ones it would measure (the
episodes are seeded, and tests/test_random_scores.py checks it on real tasks). A task whose
code or packages changed has no matching row and is measured, as with `--measure-random`.

Regenerate after changing an env wrapper or a pin (tests name the stale rows):

    opengato collect --tasks '*' --episodes 1 --random-episodes 100 --measure-random \\
        --data-dir /tmp/rand
    python -m opengato.data.random_scores /tmp/rand

or, after a change to one suite's wrapper, collect that suite alone (`--tasks babyai`) and add
`--update`: its rows replace theirs and the table's other rows are kept.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

from opengato.files import atomic_write_json
from opengato.seeds import RANDOM_SEED_START
from opengato.tasks import Task

TABLE = Path(__file__).with_name("random_scores.json")
EPISODES = 100
"""Random episodes behind every shipped row (seeds `RANDOM_SEED_START + i`)."""
FIELDS = ("random", "random_success_rate", "random_episodes")
"""What a row gives a task's entry in scores.json."""


@cache
def _table() -> dict[str, dict]:
    if not TABLE.exists():
        return {}
    return json.loads(TABLE.read_text())["tasks"]


def may_ship(task: Task, seed: int, episodes: int) -> dict | None:
    """The shipped row of `task` ({"env_hash", "random", "random_success_rate",
    "random_episodes"}) if collection with this `seed` and number of random `episodes` would
    measure exactly it, provided the env still hashes to the row's `env_hash` (the caller checks
    that: hashing builds the env); else None."""
    row = _table().get(task.name)
    if row is None or seed != 0 or episodes != EPISODES:
        return None
    return row


def build(root: Path) -> dict:
    """The table from a data root whose collection measured random scores with the defaults:
    one row per task of its scores.json that has them (rows are checked: seeds and counts)."""
    from opengato.data.episodes import read_collection_meta
    from opengato.data.generator import env_hash, random_env_task
    from opengato.data.scores import load_scores
    from opengato.tasks import get_task

    rows = {}
    for name, entry in sorted(load_scores(root).items()):
        meta = read_collection_meta(name, root) or {}
        if entry.get("random") is None or meta.get("random_seed") != RANDOM_SEED_START:
            continue
        if meta.get("random_episodes_requested") != EPISODES:
            continue
        rows[name] = {"env_hash": env_hash(random_env_task(get_task(name))),
                      **{k: entry[k] for k in FIELDS}}  # fmt: skip
    return {"episodes": EPISODES, "seed_start": RANDOM_SEED_START, "tasks": rows}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    update = "--update" in args
    args = [a for a in args if a != "--update"]
    usage = "usage: python -m opengato.data.random_scores DATA_ROOT [--update]"
    if len(args) != 1 or args[0] in ("-h", "--help"):
        sys.exit(usage)
    if not Path(args[0]).is_dir():
        sys.exit(f"{args[0]} is not a data root (a folder `opengato collect` wrote)\n{usage}")
    table = build(Path(args[0]))
    measured = len(table["tasks"])
    if not measured:  # writing it would empty the shipped table
        sys.exit(f"no random scores measured in {args[0]} (collect with --measure-random): "
                 f"{TABLE} left as it is")  # fmt: skip
    if update:  # the root's rows over the shipped table's
        table["tasks"] = {**json.loads(TABLE.read_text())["tasks"], **table["tasks"]}
    atomic_write_json(TABLE, table, sort_keys=True)
    print(f"wrote {len(table['tasks'])} rows ({measured} measured in {args[0]}) to {TABLE}")
    from opengato.data.scores import load_scores

    left = sorted(set(load_scores(Path(args[0]))) - set(table["tasks"]))
    if left:  # e.g. every expert episode filtered out: no dataset records how it was collected
        print(f"no row (no dataset with the default random settings; collect these again, with "
              f"more --episodes if none was kept): {', '.join(left)}")  # fmt: skip


if __name__ == "__main__":
    main()
