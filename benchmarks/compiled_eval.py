"""Does compiled decoding change what the agent does? Per-episode returns of a checkpoint on
held-out seeds acting with `--weights packed` (the default) and `--weights compiled`, one env at
a time (the real-time case), in fp32 and cast to bf16; with the seconds each took.

    python benchmarks/compiled_eval.py runs/demo/train [episodes] [tasks]

Prints, per dtype and task, how many episodes are identical and both mean returns.
"""

from __future__ import annotations

import sys
import time

from act_attention_eval import agent_in

from opengato.agent.eval_config import EvalConfig
from opengato.agent.rollout import evaluate_task
from opengato.tasks import DEFAULT_TASKS


def main(checkpoint: str, episodes: int = 10, tasks: list[str] = DEFAULT_TASKS) -> None:
    for dtype in ("fp32", "bf16"):
        agent = agent_in(checkpoint, dtype)
        for name in tasks:
            returns, seconds = {}, {}
            for weights in ("packed", "compiled"):
                cfg = EvalConfig(checkpoint=checkpoint, episodes=episodes, num_envs=1,
                                 weights=weights)  # fmt: skip
                t0 = time.perf_counter()
                returns[weights] = [
                    e["return"] for e in evaluate_task(name, cfg, agent)["episodes"]
                ]
                seconds[weights] = time.perf_counter() - t0
            a, b = returns["packed"], returns["compiled"]
            same = sum(x == y for x, y in zip(a, b, strict=True))
            print(f"{dtype} {name}: {same}/{len(a)} episodes identical, mean return packed "
                  f"{sum(a) / len(a):.3f} ({seconds['packed']:.1f} s), compiled "
                  f"{sum(b) / len(b):.3f} ({seconds['compiled']:.1f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], int(args[1]) if len(args) > 1 else 10,
         args[2].split(",") if len(args) > 2 else DEFAULT_TASKS)  # fmt: skip
