"""MinAtar's five Atari-like games and the experts trained here for them (docs/experts.md).

A MinAtar state is a 10x10 grid of C boolean channels (C = 4 to 10: paddle, ball, trail,
brick, ...). Tokenised value by value it would cost 100*C tokens a step (1,000 for
Seaquest, more than a 1024-token window can hold with its action). `MinAtarCells` packs the
channels of each cell into one integer, bit c set when channel c is on: a `Box(10, 10)` of
integers in [0, 2**C - 1], which the tokenizer reads as 100 discrete tokens (Seaquest's
2**10 - 1 = 1023 is the largest value a discrete token holds). It is lossless, and a step
(100 observation tokens, the separator and one action token) is 102 tokens, so a 1024-token
window holds 10 steps. Gato tokenised Atari as image patches; MinAtar's 10x10 frame is
smaller than one 16x16 patch, so the patch route would blur every object into one token.

An expert is an `MLPActor` (opengato/experts/actor.py) over the unpacked channels, read from
`opengato/experts/weights/MinAtar-<Game>.safetensors`; `opengato train-expert minatar/<Game>`
retrains one with PPO. Only the games whose weights ship become tasks (`minatar/<Game>`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from opengato.experts.actor import MLPActor, load_actor

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Our name -> MinAtar's. Cheapest to learn first.
MINATAR_GAMES = {
    "Breakout": "breakout",
    "SpaceInvaders": "space_invaders",
    "Freeway": "freeway",
    "Asterix": "asterix",
    "Seaquest": "seaquest",
}
# Freeway ends itself after 2,500 steps; the others end when the agent dies, which a good
# agent can put off indefinitely (Breakout's bricks come back). The cap keeps an episode to
# 255k tokens.
MINATAR_MAX_STEPS = 2500


class MinAtarCells(gym.ObservationWrapper):
    """The (10, 10, C) boolean state as a (10, 10) int64 Box: bit c of a cell is channel c."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.channels = env.observation_space.shape[-1]
        high = 2**self.channels - 1
        self.observation_space = spaces.Box(0, high, env.observation_space.shape[:2], np.int64)
        self._weights = (1 << np.arange(self.channels)).astype(np.int64)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(obs, np.int64) @ self._weights


def planes(cells: np.ndarray, channels: int) -> np.ndarray:
    """The inverse of MinAtarCells, flattened: (10, 10) ints -> (10*10*C,) float32 in {0, 1},
    what an expert's MLP reads."""
    bits = (np.asarray(cells, np.int64)[..., None] >> np.arange(channels)) & 1
    return bits.reshape(-1).astype(np.float32)


def features(env: gym.Env) -> Callable[[np.ndarray], np.ndarray]:
    """What an expert's MLP reads of a `MinAtarCells` env's observation: `planes`, with the
    channel count its space implies (what training exports and `MinAtarExpert` runs)."""
    return partial(planes, channels=int(env.observation_space.high.flat[0]).bit_length())


def make_minatar(game: str, render_mode: str | None = None) -> gym.Env:
    """A MinAtar game (`Breakout`) with its minimal action set, as a `MinAtarCells` env with
    a MINATAR_MAX_STEPS time limit. MinAtar's defaults stand: sticky actions with probability
    0.1 and difficulty that ramps up over an episode."""
    if game not in MINATAR_GAMES:
        raise ValueError(f"unknown MinAtar game {game!r}; one of {', '.join(MINATAR_GAMES)}")
    from minatar.gym import BaseEnv  # imports seaborn (for rgb_array colours): ~1 s

    mode = "rgb_array" if render_mode == "rgb_array" else None  # MinAtar's "human" needs a display
    env = BaseEnv(MINATAR_GAMES[game], render_mode=mode, use_minimal_action_set=True)
    env = _Rgb8(env) if mode else env
    return gym.wrappers.TimeLimit(MinAtarCells(env), MINATAR_MAX_STEPS)


class _Rgb8(gym.Wrapper):
    """MinAtar renders a (10, 10, 3) float image in [0, 1]; the rest of opengato (reports,
    the web page) shows uint8 frames, 16x upscaled so that a cell is visible."""

    def render(self):
        frame = self.env.render()
        frame = (np.asarray(frame, np.float64) * 255).round().astype(np.uint8)
        return frame.repeat(16, axis=0).repeat(16, axis=1)


def weights_path(game: str, weights_dir: str | Path = WEIGHTS_DIR) -> Path:
    """Where the expert of `game` (`Breakout`) lives."""
    return Path(weights_dir) / f"MinAtar-{game}.safetensors"


def shipped_games(weights_dir: str | Path = WEIGHTS_DIR) -> list[str]:
    """The games of MINATAR_GAMES whose expert weights are in `weights_dir`, in that order."""
    return [g for g in MINATAR_GAMES if weights_path(g, weights_dir).exists()]


class MinAtarExpert:
    """The shipped actor of a MinAtar game: `act(cells)` -> the action of the largest logit."""

    def __init__(self, env: gym.Env, path: str | Path | None = None):
        self.features = features(env)
        dim = len(self.features(env.observation_space.low))
        self.actor: MLPActor = load_actor(path or weights_path(_game_of(env)), env, obs_dim=dim)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> int:
        return self.actor(self.features(obs))


def _game_of(env: gym.Env) -> str:
    name = env.unwrapped.game.env_name
    return {v: k for k, v in MINATAR_GAMES.items()}[name]
