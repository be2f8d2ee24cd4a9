"""How many forward passes the suite's evaluation takes at most, by arithmetic: every episode
runs to its task's step limit, a lock-step takes as many forwards as the longest action among
its live envs (the observation's prefill also samples the first action token), and tasks start
longest first in groups of G (`opengato eval --group-tasks G`), as `agent/concurrent.py`
starts them (ignoring that a group's finished tasks let the next ones in early). Three ways:

- one lane per task (`--group-tasks 1`);
- grouped: a group's tasks of one domain with equal spaces share a lane (`--group-tasks G`);
- mixed: a group's tasks share a lane whatever their spaces (`--group-tasks G --mix-spaces`).

Episodes a model ends early (success, a fall) take fewer; the ratio is what the option changes.
Builds one env per task to read its spaces (a minute or two):

    MUJOCO_GL=egl python benchmarks/eval_forwards.py --group-tasks 32
"""

from __future__ import annotations

import argparse

from opengato.tasks import SUITE, get_task, select
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig


def lane_forwards(tasks: list[str], info: dict) -> int:
    """Forwards of one lane of these tasks: per lock-step, the longest live action."""
    horizon = max(info[t]["limit"] for t in tasks)
    return sum(
        max(info[t]["tokens"] for t in tasks if info[t]["limit"] > s) for s in range(horizon)
    )


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(SUITE), help="`opengato eval --tasks` (any spec)")
    p.add_argument("--group-tasks", type=int, default=32)
    args = p.parse_args(argv)
    names = [n for n in select(args.tasks)[0] if get_task(n).domain not in ("text", "vision")]
    tok, info = Tokenizer(TokenizerConfig()), {}
    for n in names:
        task = get_task(n)
        env = task.make_env()
        info[n] = {"limit": task.max_episode_steps, "domain": task.domain,
                   "tokens": len(tok.action_token_ranges(env.action_space)),
                   "spaces": repr((env.observation_space, env.action_space))}  # fmt: skip
        env.close()
    G, order = args.group_tasks, sorted(names, key=lambda n: info[n]["limit"], reverse=True)
    alone = sum(info[n]["limit"] * info[n]["tokens"] for n in names)
    mixed = sum(lane_forwards(order[i : i + G], info) for i in range(0, len(order), G))
    grouped, waiting = 0, list(order)
    while waiting:
        group = [waiting.pop(0)]
        group += [t for t in waiting if info[t]["domain"] == info[group[0]]["domain"]][: G - 1]
        lanes: dict[str, list[str]] = {}
        for t in group:
            if t in waiting:
                waiting.remove(t)
            lanes.setdefault(info[t]["spaces"], []).append(t)
        grouped += sum(lane_forwards(lane, info) for lane in lanes.values())
    line = (f"{len(names)} tasks, groups of {G}, every episode to its step limit: forward passes "
            f"one lane per task {alone:,}; grouped {grouped:,}; mixed {mixed:,}")  # fmt: skip
    print(line)
    return line


if __name__ == "__main__":
    main()
