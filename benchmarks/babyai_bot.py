"""The BabyAI bot's time per expert episode: minigrid's own `BabyAIBot` against the expert's
(opengato/experts/babyai.py: its search's queue a deque, the cells in view read from the
observation), interleaved level by level, in one
process, on the same seeds; and whether every episode's actions were the same.

    python benchmarks/babyai_bot.py [EPISODES] [LEVEL ...]   # default 20, 8 levels

Prints one row per level: episodes, steps, CPU seconds of each bot's episodes (env steps
included), and the speed-up. Results: benchmarks/RESULTS.md, "The BabyAI bot's search"."""

import sys
import time

from minigrid.utils.baby_ai_bot import BabyAIBot

from opengato.experts.babyai import _bot_class
from opengato.tasks import get_task

LEVELS = ["babyai/GoToObj", "babyai/GoToLocal", "babyai/GoToObjMaze", "babyai/GoToSeq",
          "babyai/KeyCorridorS6R3", "babyai/BossLevel", "babyai/SynthSeq", "babyai/MiniBossLevel"]  # fmt: skip
# Not GoToImpUnlock or UnlockToUnlock: on some seeds the bot's replanning never returns (collection
# cuts those episodes by wall clock, data/generator.py), which would hang this loop.


def play(task, bot_class, seed: int) -> tuple[list[int], float]:
    """An episode of `bot_class` on `seed`: its actions and CPU seconds. The expert's bot reads
    the cells in view from the observation, as the expert plays it (`replan_seeing`)."""
    env = task.make_env()
    obs, _ = env.reset(seed=seed)
    t = time.process_time()
    bot, actions = bot_class(env.unwrapped), []
    seeing = hasattr(bot, "replan_seeing")
    for _ in range(task.max_episode_steps):
        actions.append(int(bot.replan_seeing(obs["grid"]) if seeing else bot.replan()))
        obs, _, terminated, truncated, _ = env.step(actions[-1])
        if terminated or truncated:
            break
    return actions, time.process_time() - t


def main() -> None:
    episodes = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    levels = sys.argv[2:] or LEVELS
    print(
        "| level | episodes | steps | minigrid's bot s | the expert's s | speed-up | same actions |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    total = [0.0, 0.0]
    for name in levels:
        task, secs, steps, same = get_task(name), [0.0, 0.0], 0, True
        for seed in range(episodes):
            a, ta = play(task, BabyAIBot, seed)
            b, tb = play(task, _bot_class(), seed)
            secs[0] += ta
            secs[1] += tb
            steps += len(a)
            same &= a == b
        total = [total[0] + secs[0], total[1] + secs[1]]
        print(f"| {name} | {episodes} | {steps} | {secs[0]:.2f} | {secs[1]:.2f} | "
              f"{secs[0] / secs[1]:.2f}x | {'yes' if same else 'NO'} |")  # fmt: skip
    print(f"| all | | | {total[0]:.2f} | {total[1]:.2f} | {total[0] / total[1]:.2f}x | |")


if __name__ == "__main__":
    main()
