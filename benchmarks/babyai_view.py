"""A BabyAI env step and its view, timed: the env's `step` (which makes the observation) and
the view alone, opengato's (`suites.BabyAIObs.view`, what the envs use) against minigrid's own
`MiniGridEnv.gen_obs`, over random actions on a few levels.

    python benchmarks/babyai_view.py [steps]
"""

from __future__ import annotations

import sys
import time

import numpy as np
from minigrid.minigrid_env import MiniGridEnv

from opengato.tasks import get_task

LEVELS = ("babyai/GoToObj", "babyai/BossLevel", "babyai/GoToObjMazeS7")


def main(steps: int = 3000) -> None:
    print("| level | env step us | view, opengato us | view, minigrid us |")
    print("| --- | ---: | ---: | ---: |")
    for name in LEVELS:
        env = get_task(name).make_env()
        base, rng = env.unwrapped, np.random.default_rng(0)
        env.reset(seed=0)
        t_step = t_ours = t_theirs = 0.0
        for i in range(steps):
            t0 = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(int(rng.integers(0, 3)))
            t1 = time.perf_counter()
            base.gen_obs()
            t2 = time.perf_counter()
            MiniGridEnv.gen_obs(base)
            t3 = time.perf_counter()
            t_step, t_ours, t_theirs = t_step + t1 - t0, t_ours + t2 - t1, t_theirs + t3 - t2
            if terminated or truncated:
                env.reset(seed=i)
        us = [1e6 * t / steps for t in (t_step, t_ours, t_theirs)]
        print(f"| {name} | {us[0]:.0f} | {us[1]:.0f} | {us[2]:.0f} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
