"""How many forward passes the suite's evaluation takes at most, by arithmetic: every episode
runs to its task's step limit, a lock-step takes as many forwards as the longest action among
its live envs (the observation's prefill also samples the first action token), and tasks start
longest first in groups of G (`opengato eval --group-tasks G`), as `agent/concurrent.py`
starts them (ignoring that a group's finished tasks let the next ones in early). Three ways:

- one lane per task (`--group-tasks 1`);
- grouped: a group's tasks of one domain with equal spaces share a lane (`--group-tasks G`);
- mixed: a group's tasks share a lane whatever their spaces (`--group-tasks G --mix-spaces`).

Episodes a model ends early (success, a fall) take fewer; the ratio is what the option changes.
It also counts the token slots the forwards feed (rows x tokens, `--envs` rows a task; a
prefill is padded to the longest observation among its live rows, as a ragged lane pads it):
the GPU's work, where the forward count is its launches. Builds one env per task to read its
spaces and its first observation's tokens (a minute or two):

    MUJOCO_GL=egl python benchmarks/eval_forwards.py --group-tasks 32
"""

from __future__ import annotations

import argparse

from opengato.tasks import SUITE, get_task, select
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig


def lane_forwards(tasks: list[str], info: dict, envs: int) -> tuple[int, int]:
    """Forwards of one lane of these tasks (per lock-step, the longest live action) and the
    token slots they feed: a prefill of the longest live observation, its separator and the
    last action token, then a token a row for each other action token."""
    forwards = slots = 0
    for s in range(max(info[t]["limit"] for t in tasks)):
        live = [t for t in tasks if info[t]["limit"] > s]
        n_act, rows = max(info[t]["tokens"] for t in live), envs * len(live)
        forwards += n_act
        slots += rows * (max(info[t]["obs"] for t in live) + 2) + rows * (n_act - 1)
    return forwards, slots


def grouped_lanes(order: list[str], info: dict, G: int) -> list[list[str]]:
    """The lanes of `--group-tasks G`: groups of one domain, a lane per spaces within each."""
    lanes, waiting = [], list(order)
    while waiting:
        group = [waiting.pop(0)]
        group += [t for t in waiting if info[t]["domain"] == info[group[0]]["domain"]][: G - 1]
        by_spaces: dict[str, list[str]] = {}
        for t in group:
            if t in waiting:
                waiting.remove(t)
            by_spaces.setdefault(info[t]["spaces"], []).append(t)
        lanes += by_spaces.values()
    return lanes


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(SUITE), help="`opengato eval --tasks` (any spec)")
    p.add_argument("--group-tasks", type=int, default=32)
    p.add_argument("--envs", type=int, default=20, help="envs a task (its rows in a lane)")
    args = p.parse_args(argv)
    names = [n for n in select(args.tasks)[0] if get_task(n).domain not in ("text", "vision")]
    tok, info = Tokenizer(TokenizerConfig()), {}
    for n in names:
        task = get_task(n)
        env = task.make_env()
        first = env.reset(seed=0)[0]
        info[n] = {"limit": task.max_episode_steps, "domain": task.domain,
                   "tokens": len(tok.action_token_ranges(env.action_space)),
                   "obs": len(tok.tokenize_observation(env.observation_space, first)),
                   "spaces": repr((env.observation_space, env.action_space))}  # fmt: skip
        env.close()
    G, order = args.group_tasks, sorted(names, key=lambda n: info[n]["limit"], reverse=True)
    ways = {
        "one lane per task": [[n] for n in names],
        "grouped": grouped_lanes(order, info, G),
        "mixed": [order[i : i + G] for i in range(0, len(order), G)],
    }
    counts = {}
    for way, lanes in ways.items():
        per_lane = [lane_forwards(lane, info, args.envs) for lane in lanes]
        counts[way] = (sum(f for f, _ in per_lane), sum(s for _, s in per_lane))
    line = (f"{len(names)} tasks, groups of {G}, every episode to its step limit, {args.envs} "
            "envs a task: forward passes (token slots) " + "; ".join(
                f"{way} {f:,} ({s:,})" for way, (f, s) in counts.items()))  # fmt: skip
    print(line)
    return line


if __name__ == "__main__":
    main()
