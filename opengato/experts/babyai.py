"""BabyAI: minigrid's own planning bot (90 of minigrid's 96 levels are registered, those it
solves: docs/environments.md)."""

from __future__ import annotations

import functools
from collections import deque

import gymnasium as gym
import numpy as np


class BabyAIExpert:
    """Wraps `minigrid.utils.baby_ai_bot.BabyAIBot`. The bot reads the env's state, and from
    `obs`, which must be the env's current observation (the last one its reset or step
    returned), only which cells are in view.

    The bot may loop forever on a few seeds (GoToImpUnlock, UnlockToUnlock): callers must run
    episodes under a wall-clock limit (data/generator.py does).
    """

    def __init__(self, env: gym.Env):
        self.env = env
        self.bot = None

    def reset(self) -> None:
        self.bot = _bot_class()(self.env.unwrapped)

    def act(self, obs: dict) -> int:
        return int(self.bot.replan_seeing(obs["grid"]))


@functools.cache
def _bot_class() -> type:
    """minigrid's `BabyAIBot` doing the same work faster.

    In the pinned minigrid 3.2.0 the breadth-first search, which runs several times a step, takes
    the front of its queue with `queue = queue[1:]`, a copy of the whole queue at every visit: on
    the larger levels (BossLevel's 22 x 22 cells) the bot's largest single line. And the cells in
    view are found by rendering the view again (the env's step has just rendered it), then
    marked one at a time with numpy arithmetic on 2-vectors. Here the queue is a deque, the
    cells in view are read from the observation (`replan_seeing`) and marked as arrays: 1.70x
    per expert episode against minigrid's bot, the datasets byte-identical (benchmarks/
    RESULTS.md, "The BabyAI bot's search" and "The cells in view read from the observation").
    `test_babyai_bot_with_a_queue_plans_as_minigrids_own` (tests/test_tasks.py) plays the two
    bots side by side on levels whose plans search with and without blockers."""
    from minigrid.utils.baby_ai_bot import BabyAIBot

    class Bot(BabyAIBot):
        view = None  # the current observation's grid, while `replan_seeing` runs

        def replan_seeing(self, view: np.ndarray, action_taken=None):
            """`replan`, with the cells in view read from `view`, the grid of the env's current
            observation, rather than from a second rendering of the view (the env's step has
            just made one): 0 is "unseen" in minigrid's encoding, and every cell in view is
            encoded as 1 ("empty") or more."""
            self.view = view
            try:
                return self.replan(action_taken)
            finally:
                self.view = None

        def _process_obs(self):
            # minigrid's own marks the cells in view one at a time, with numpy arithmetic on
            # 2-vectors for each of the 7 x 7; here as arrays, the same cells.
            env = self.mission.unwrapped
            if self.view is not None:
                in_view = self.view[:, :, 0] != 0  # (vis_i, vis_j), as gen_obs_grid's mask
            else:
                _, in_view = env.gen_obs_grid()
            forward, right, size = env.dir_vec, env.right_vec, env.agent_view_size
            top_left = env.agent_pos + forward * (size - 1) - right * (size // 2)
            vi, vj = np.nonzero(in_view)  # in_view[vis_i, vis_j]
            i = top_left[0] - forward[0] * vj + right[0] * vi
            j = top_left[1] - forward[1] * vj + right[1] * vi
            ok = (i >= 0) & (i < self.vis_mask.shape[0]) & (j >= 0) & (j < self.vis_mask.shape[1])
            self.vis_mask[i[ok], j[ok]] = True

        def _breadth_first_search(self, initial_states, accept_fn, ignore_blockers):
            # The textbook search of minigrid's own, state for state: agent positions, with
            # the direction kept so that going straight is tried before turning. A neighbour
            # already visited is not queued (minigrid's skips it when taken from the queue: the
            # same visits), and cells are read from the grid's list (`Grid.get` without its
            # bounds asserts: only cells inside the outer walls are expanded).
            self.bfs_counter += 1
            queue = deque((state, None) for state in initial_states)
            grid, seen = self.mission.unwrapped.grid, self.vis_mask
            cells, width, height = grid.grid, grid.width, grid.height
            previous_pos: dict = {}
            while queue:
                (i, j, di, dj), prev_pos = queue.popleft()
                if (i, j) in previous_pos:
                    continue
                self.bfs_step_counter += 1
                inside = 0 <= i < width and 0 <= j < height
                cell = cells[j * width + i] if inside else grid.get(i, j)  # get: its assert
                previous_pos[(i, j)] = prev_pos
                if accept_fn((i, j), cell):
                    path, pos = [], (i, j)
                    while pos:
                        path.append(pos)
                        pos = previous_pos[pos]
                    return path, (i, j), previous_pos
                if not seen[i, j]:  # never observed: not expanded
                    continue
                if cell and (
                    cell.type == "wall"
                    or (cell.type == "door" and not cell.is_open)
                    or (cell.type != "door" and not ignore_blockers)
                ):
                    continue
                for k, m in ((di, dj), (dj, di), (-dj, -di), (-di, -dj)):
                    if (i + k, j + m) not in previous_pos:
                        queue.append(((i + k, j + m, k, m), (i, j)))
            return None, None, previous_pos

    return Bot
