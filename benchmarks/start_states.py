"""Do held-out seeds give held-out start states? For each task, the start states of the
evaluation seeds (1,000,000 on) against those of the collection seeds (0 on): how many
evaluation episodes begin in a state some demonstration began in, and how many distinct start
states the collection seeds give.

    python benchmarks/start_states.py [tasks] [collection episodes] [evaluation episodes]

Defaults: the demo's 12 tasks, 100 and 50. A start state is the env's first observation,
except for BabyAI, where it is the whole level (grid, agent's place and direction, mission):
the first observation shows only the agent's 7 x 7 view. The seeds are those of
opengato/seeds.py; the envs are built as collection and evaluation build them.
"""

from __future__ import annotations

import hashlib
import sys

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


def main(tasks: str = ",".join(DEFAULT_TASKS), collected: int = 100, evaluated: int = 50) -> None:
    print(f"collection seeds {COLLECT_SEED_START}-{COLLECT_SEED_START + collected - 1}, "
          f"evaluation seeds {EVAL_SEED_START}-{EVAL_SEED_START + evaluated - 1}\n")  # fmt: skip
    print(
        "| task | distinct starts of the collection seeds | evaluation episodes starting "
        "where a demonstration did |\n| --- | ---: | ---: |"
    )
    for name in resolve_tasks(tasks):
        env = get_task(name).make_env()
        seen = {start_state(env, COLLECT_SEED_START + i) for i in range(collected)}
        again = sum(start_state(env, EVAL_SEED_START + i) in seen for i in range(evaluated))
        env.close()
        print(f"| {name} | {len(seen)} of {collected} | {again} of {evaluated} |", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else ",".join(DEFAULT_TASKS), *(int(a) for a in args[1:]))
