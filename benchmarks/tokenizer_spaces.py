"""What a lane of mixed spaces pays per space group and lock-step to tokenise: for each task's
spaces, `Tokenizer.observation_groups` of a batch of observations and `Tokenizer.detokenize` of
a batch of actions, microseconds a call (mean of 300), and their sums over the tasks. The
suite's first evaluation group has 23 space groups in one lane (benchmarks/RESULTS.md, "The
evaluating process's host time per step").

    python benchmarks/tokenizer_spaces.py [tasks] [envs]

`tasks`: an `opengato eval --tasks` spec (default: classic, MuJoCo, DM Control, MinAtar and a
Meta-World and a BabyAI task); `envs`: the batch (4). For an A/B, run two checkouts in turn
with PYTHONPATH, several times: on a shared 2-core machine one run's sums move by ~10%.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from opengato.tasks import get_task, select
from opengato.tokens import spaces as walk
from opengato.tokens.tokenizer import Tokenizer

CALLS = 300


def per_call_us(fn) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(CALLS):
        fn()
    return (time.perf_counter() - t) / CALLS * 1e6


def main(spec: str, envs: int) -> None:
    warnings.filterwarnings("ignore")
    tok = Tokenizer()
    total_obs = total_act = 0.0
    for name in select(f"{spec},-heldout")[0]:
        env = get_task(name).make_env()
        obs_space, act_space = env.observation_space, env.action_space
        env.close()
        obs = walk.stack(obs_space, [obs_space.sample() for _ in range(envs)])
        ids = np.stack([tok.tokenize_action(act_space, act_space.sample()) for _ in range(envs)])
        t_obs = per_call_us(lambda: tok.observation_groups(obs_space, obs, envs))  # noqa: B023
        t_act = per_call_us(lambda: tok.detokenize(act_space, ids))  # noqa: B023
        total_obs, total_act = total_obs + t_obs, total_act + t_act
        print(f"{name:34s} observations {t_obs:7.1f} us   actions {t_act:6.1f} us")
    print(f"sum: observations {total_obs:.0f} us, actions {total_act:.0f} us ({envs} envs a call)")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a else "classic,mujoco,dmc,minatar,metaworld/reach-v3,babyai/GoToObj",
         int(a[1]) if len(a) > 1 else 4)  # fmt: skip
