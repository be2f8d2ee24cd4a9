"""Gymnasium's MuJoCo v5 tasks and the experts trained here for them (docs/experts.md).

An expert is an `MLPActor` (opengato/experts/actor.py) read from
`opengato/experts/weights/<EnvId>.safetensors`; `opengato train-expert mujoco/<EnvId>`
retrains one from scratch. Only the envs whose weights ship become tasks (`mujoco/<EnvId>`,
registered by opengato.tasks).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np

from opengato.experts.actor import MLPActor, load_actor

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Gymnasium's MuJoCo v5 envs, cheapest first (steps/s of SAC training here: docs/experts.md).
MUJOCO_ENVS = (
    "InvertedPendulum-v5",
    "InvertedDoublePendulum-v5",
    "Reacher-v5",
    "Swimmer-v5",
    "Hopper-v5",
    "HalfCheetah-v5",
    "Walker2d-v5",
    "Ant-v5",
)


def make_mujoco(env_id: str, render_mode: str | None = None) -> gym.Env:
    """A Gymnasium MuJoCo env with float32, unbounded observations: the classic suite's
    wrapping (suites.make_classic)."""
    from opengato.suites import make_classic

    return make_classic(env_id, render_mode)


def features(env: gym.Env) -> Callable[[np.ndarray], np.ndarray]:
    """What an expert's MLP reads: the float32 state as it is."""
    return partial(np.asarray, dtype=np.float32)


def weights_path(env_id: str, weights_dir: str | Path = WEIGHTS_DIR) -> Path:
    """Where the expert of `env_id` (`Hopper-v5`) lives."""
    return Path(weights_dir) / f"{env_id}.safetensors"


def shipped_envs(weights_dir: str | Path = WEIGHTS_DIR) -> list[str]:
    """The env ids of MUJOCO_ENVS whose expert weights are in `weights_dir`, in that order."""
    return [e for e in MUJOCO_ENVS if weights_path(e, weights_dir).exists()]


class MujocoExpert:
    """The shipped deterministic actor of a MuJoCo env: `act(obs)` -> float32 action."""

    def __init__(self, env: gym.Env, path: str | Path | None = None):
        env_id = env.unwrapped.spec.id
        self.actor: MLPActor = load_actor(path or weights_path(env_id), env)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.actor(obs)
