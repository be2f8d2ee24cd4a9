"""A Gymnasium environment opengato has never heard of, registered as an opengato task.

The walk-through is docs/your-own-env.md; in short, from the repository root::

    opengato --import examples/my_gridworld.py collect --tasks mygrid
    opengato --import examples/my_gridworld.py train --tasks mygrid --init CHECKPOINT ...

Importing this module registers the environment with Gymnasium (`MyGridWorld-v0`) and two
tasks with opengato (`mygrid/GridWorld-v0` on a 5 x 5 grid and `mygrid/GridWorld7x7-v0` on a
7 x 7 one, both with the scripted expert). Nothing in opengato changes.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from opengato.tasks import register_gym_task

MOVES = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]])  # (row, col) steps: right, down, left, up
CELL = 8  # pixels per cell in rgb_array renders


class GridWorldEnv(gym.Env):
    """Walk from a random cell to a random goal cell on a `size` x `size` grid.

    Observation, a Dict: `agent` and `goal` (row, col) as MultiDiscretes, and `time_left`, the
    share of the step budget left, as a float Box. Actions: 0 right, 1 down, 2 left, 3 up
    (a move into the edge stays put). Reaching the goal ends the episode with reward
    `1 - 0.9 * steps / max_steps` (MiniGrid's) and `info["success"]`; every other step gives 0.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, size: int = 5, max_steps: int = 30, render_mode: str | None = None):
        self.size, self.max_steps, self.render_mode = size, max_steps, render_mode
        self.observation_space = spaces.Dict(
            {
                "agent": spaces.MultiDiscrete([size, size]),
                "goal": spaces.MultiDiscrete([size, size]),
                "time_left": spaces.Box(0.0, 1.0, (1,), np.float32),
            }
        )
        self.action_space = spaces.Discrete(4)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        cells = self.np_random.choice(self.size * self.size, size=2, replace=False)
        self.agent, self.goal = (np.array(divmod(int(c), self.size)) for c in cells)
        self.steps = 0
        return self._obs(), {"success": False}

    def step(self, action: Any):
        self.agent = np.clip(self.agent + MOVES[int(action)], 0, self.size - 1)
        self.steps += 1
        success = bool(np.array_equal(self.agent, self.goal))
        reward = 1.0 - 0.9 * self.steps / self.max_steps if success else 0.0
        truncated = not success and self.steps >= self.max_steps
        return self._obs(), reward, success, truncated, {"success": success}

    def _obs(self) -> dict[str, np.ndarray]:
        left = np.array([1.0 - self.steps / self.max_steps], np.float32)
        return {"agent": self.agent.astype(np.int64), "goal": self.goal.astype(np.int64),
                "time_left": left}  # fmt: skip

    def render(self) -> np.ndarray:
        """The grid as an RGB image: the agent red, the goal green."""
        image = np.full((self.size * CELL, self.size * CELL, 3), 40, np.uint8)
        for (row, col), colour in ((self.goal, (40, 200, 60)), (self.agent, (220, 40, 40))):
            image[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = colour
        return image


class GreedyExpert:
    """The scripted expert: along the rows towards the goal, then along the columns.
    opengato calls `GreedyExpert(env)` once per env, `reset()` after every `env.reset()`, and
    `act(obs)` every step."""

    def __init__(self, env: gym.Env):
        self.env = env

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray]) -> int:
        d_row, d_col = (int(x) for x in obs["goal"] - obs["agent"])
        if d_row:
            return 1 if d_row > 0 else 3
        return 0 if d_col > 0 else 2


gym.register("MyGridWorld-v0", entry_point=GridWorldEnv, max_episode_steps=30)
# Two tasks from one environment: keyword arguments after the expert's go to gym.make.
for name, size in (("mygrid/GridWorld-v0", 5), ("mygrid/GridWorld7x7-v0", 7)):
    register_gym_task(
        name,
        "MyGridWorld-v0",
        expert=GreedyExpert,
        success_key="success",
        expert_name="GreedyExpert",
        size=size,
    )
