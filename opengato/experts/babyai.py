"""BabyAI: minigrid's own planning bot (solves 87 of 96 levels, see docs/environments.md)."""

from __future__ import annotations

import gymnasium as gym


class BabyAIExpert:
    """Wraps `minigrid.utils.baby_ai_bot.BabyAIBot`; the bot reads the env state, not `obs`.

    The bot may loop forever on a few seeds (GoToImpUnlock, UnlockToUnlock): callers must run
    episodes under a wall-clock limit (data/generator.py does).
    """

    def __init__(self, env: gym.Env):
        self.env = env
        self.bot = None

    def reset(self) -> None:
        from minigrid.utils.baby_ai_bot import BabyAIBot

        self.bot = BabyAIBot(self.env.unwrapped)

    def act(self, obs: dict) -> int:
        return int(self.bot.replan())
