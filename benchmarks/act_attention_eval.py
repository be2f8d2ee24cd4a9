"""Does an acting-attention variant change what the agent does? Per-episode returns of a
checkpoint on held-out seeds with `opengato.model.decoding.small_attention` and with the five-pass
version it replaced (benchmarks/act_attention_ab.py), in fp32 and cast to bf16.

    python benchmarks/act_attention_eval.py runs/demo/train [episodes] [tasks]

Prints, per dtype and task, how many episodes are identical and both mean returns.
"""

from __future__ import annotations

import sys

import torch
from act_attention_ab import five_pass

import opengato.model.decoding as decoding
from opengato.agent.eval_config import EvalConfig
from opengato.agent.rollout import evaluate_task
from opengato.model.checkpoint import load_agent
from opengato.seeds import EVAL_SEED_START
from opengato.tasks import DEFAULT_TASKS

CURRENT = decoding.small_attention


def agent_in(checkpoint: str, dtype: str) -> tuple:
    """The checkpoint's agent (`load_agent`), its model cast to `dtype` (fp32 or bf16)."""
    agent = load_agent(checkpoint, "cpu", EVAL_SEED_START, False)
    return (agent[0].to(torch.bfloat16), *agent[1:]) if dtype == "bf16" else agent


def main(checkpoint: str, episodes: int = 10, tasks: list[str] = DEFAULT_TASKS) -> None:
    for dtype in ("fp32", "bf16"):
        agent = agent_in(checkpoint, dtype)
        for name in tasks:
            cfg = EvalConfig(checkpoint=checkpoint, episodes=episodes, num_envs=min(episodes, 10))
            returns = {}
            for label, fn in (("current", CURRENT), ("five-pass", five_pass)):
                decoding.small_attention = fn
                returns[label] = [e["return"] for e in evaluate_task(name, cfg, agent)["episodes"]]
            decoding.small_attention = CURRENT
            a, b = returns["current"], returns["five-pass"]
            same = sum(x == y for x, y in zip(a, b, strict=True))
            print(f"{dtype} {name}: {same}/{len(a)} episodes identical, mean return current "
                  f"{sum(a) / len(a):.3f}, five-pass {sum(b) / len(b):.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], int(args[1]) if len(args) > 1 else 10,
         args[2].split(",") if len(args) > 2 else DEFAULT_TASKS)  # fmt: skip
