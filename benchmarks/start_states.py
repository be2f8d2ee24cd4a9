"""Do held-out seeds give held-out start states? For each task, the start states of the
evaluation seeds (1,000,000 on) against those of the collection seeds (0 on): how many
evaluation episodes begin in a state some demonstration began in, and how many distinct start
states the collection seeds give.

    python benchmarks/start_states.py [tasks] [collection episodes] [evaluation episodes]
    python benchmarks/start_states.py babyai/OpenRedDoor --results runs/demo/eval.json ...

Defaults: the demo's 12 tasks, 100 and 50. With `--results` (`opengato eval` results files),
each file's normalised score of the task is also split between the evaluation episodes that
start where a demonstration did and the others (by each episode's seed). A start state is the
env's first observation, except for BabyAI, where it is the whole level (grid, agent's place
and direction, mission): the first observation shows only the agent's 7 x 7 view. The seeds are those of
opengato/seeds.py; the envs are built as collection and evaluation build them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from opengato.seeds import COLLECT_SEED_START, EVAL_SEED_START
from opengato.tasks import DEFAULT_TASKS, get_task, resolve_tasks


def _bytes(obs) -> bytes:
    if isinstance(obs, dict):
        return b"".join(_bytes(obs[k]) for k in sorted(obs))
    if isinstance(obs, str):
        return obs.encode()
    return np.ascontiguousarray(obs).tobytes()


def start_state(env, seed: int) -> str:
    """A hash of the state `env.reset(seed=seed)` starts in."""
    obs, _ = env.reset(seed=seed)
    base = env.unwrapped
    if hasattr(base, "grid") and hasattr(base, "agent_pos"):  # minigrid: the whole level
        state = (base.grid.encode().tobytes(), tuple(base.agent_pos), base.agent_dir, base.mission)
        return hashlib.sha256(repr(state).encode()).hexdigest()
    return hashlib.sha256(_bytes(obs)).hexdigest()


def split_scores(result: dict, env, seen: set[str]) -> tuple[float | None, float | None]:
    """A task result's mean normalised score over its episodes that start where a demonstration
    did, and over the others (None: no such episode, or the task is not normalised)."""
    from opengato.agent.scores import normalized_episodes

    scores = normalized_episodes(result)
    if scores is None:
        return None, None
    again = np.array([start_state(env, e["seed"]) in seen for e in result["episodes"]])
    return tuple(float(scores[m].mean()) if m.any() else None for m in (again, ~again))


def main(
    tasks: str = ",".join(DEFAULT_TASKS),
    collected: int = 100,
    evaluated: int = 50,
    results: tuple[str, ...] = (),
) -> None:
    print(f"collection seeds {COLLECT_SEED_START}-{COLLECT_SEED_START + collected - 1}, "
          f"evaluation seeds {EVAL_SEED_START}-{EVAL_SEED_START + evaluated - 1}\n")  # fmt: skip
    print(
        "| task | distinct starts of the collection seeds | evaluation episodes starting "
        "where a demonstration did |\n| --- | ---: | ---: |"
    )
    split = []
    for name in resolve_tasks(tasks):
        env = get_task(name).make_env()
        seen = {start_state(env, COLLECT_SEED_START + i) for i in range(collected)}
        again = sum(start_state(env, EVAL_SEED_START + i) in seen for i in range(evaluated))
        print(f"| {name} | {len(seen)} of {collected} | {again} of {evaluated} |", flush=True)
        for path in results:
            result = json.loads(Path(path).read_text())["tasks"].get(name)
            if result and "episodes" in result:
                fmt = ["-" if v is None else f"{v:.1f}" for v in split_scores(result, env, seen)]
                split.append(f"{name}, {path}: normalised score {fmt[0]} where a demonstration "
                             f"started, {fmt[1]} elsewhere")  # fmt: skip
        env.close()
    print("\n".join(["", *split]) if split else "")


if __name__ == "__main__":
    args = sys.argv[1:]
    files = args[args.index("--results") + 1 :] if "--results" in args else []
    args = args[: args.index("--results")] if "--results" in args else args
    main(args[0] if args else ",".join(DEFAULT_TASKS), *(int(a) for a in args[1:]),
         results=tuple(files))  # fmt: skip
