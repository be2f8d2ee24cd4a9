"""The DeepMind Control Suite from state (dm_control through shimmy) and the experts trained
here for it (docs/experts.md).

A DMC observation is a dict of named float arrays (`position`, `velocity`, `to_target`, ...);
the tokenizer reads it as it is, a `Dict` of float32 Boxes (a scalar such as walker's
`height` becomes shape (1,)). Actions are float32 in [-1, 1]. Episodes are 1,000 steps,
truncated by dm_control itself; `reset(seed=s)` gives the same start for the same seed.

An expert is an `MLPActor` (opengato/experts/actor.py) over the flattened dict (Gymnasium's
`flatten`, key order as the space lists them), read from
`opengato/experts/weights/dmc-<domain>-<task>.safetensors`; `opengato train-expert
dmc/<domain>-<task>` retrains one with SAC. Only the tasks whose weights ship become tasks,
and `point_mass-easy`, whose expert is scripted (`PointMassExpert`): SAC did not learn it here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from opengato.experts.actor import MLPActor, load_actor

WEIGHTS_DIR = Path(__file__).parent / "weights"

# `<domain>-<task>` as shimmy registers them (`dm_control/<domain>-<task>-v0`), cheapest to
# learn first.
DMC_TASKS = (
    "cartpole-balance",
    "point_mass-easy",
    "cartpole-swingup",
    "reacher-easy",
    "ball_in_cup-catch",
    "finger-spin",
    "walker-walk",
    "cheetah-run",
)
DMC_MAX_STEPS = 1000
RENDER_SIZE = {"height": 120, "width": 160}


class DmcSpaces(gym.Wrapper):
    """Float32 spaces: each observation entry a 1-D unbounded Box, the action a [-1, 1] Box."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = spaces.Dict(
            {
                key: spaces.Box(-np.inf, np.inf, (max(1, int(np.prod(s.shape))),), np.float32)
                for key, s in env.observation_space.spaces.items()
            }
        )
        act = env.action_space
        self.action_space = spaces.Box(
            act.low.astype(np.float32), act.high.astype(np.float32), act.shape, np.float32
        )

    def _obs(self, obs: dict) -> dict:
        return {k: np.asarray(obs[k], np.float32).reshape(-1) for k in self.observation_space}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._obs(obs), info

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._obs(obs), float(reward), terminated, truncated, info


def make_dmc(name: str, render_mode: str | None = None) -> gym.Env:
    """A DMC task (`cartpole-swingup`) with float32 Dict observations."""
    if name not in DMC_TASKS:
        raise ValueError(f"unknown DMC task {name!r}; one of {', '.join(DMC_TASKS)}")
    from opengato.suites import default_to_headless_gl

    default_to_headless_gl()  # before dm_control is imported: it picks its GL backend then
    import shimmy

    gym.register_envs(shimmy)
    # Frames at 120x160 (dm_control's default is 240x320): rollout GIFs of 1,000-step episodes
    # stay under a megabyte, and the web page scales them up.
    kwargs = {"render_mode": render_mode, "render_kwargs": RENDER_SIZE} if render_mode else {}
    env = DmcSpaces(gym.make(f"dm_control/{name}-v0", **kwargs))
    quiet_dm_control()
    return env


def quiet_dm_control() -> None:
    """Undo what importing dm_control does to warnings. `dm_control.composer` sets
    `warnings.simplefilter("always", DeprecationWarning)` for the whole process, and under
    NumPy 2.5 dm_control's own index code warns on every physics read (`key_item.shape = ...`):
    one suite collection on a GPU machine printed a million of them, 256 MB of log. Python's
    default for DeprecationWarning is put back (shown for code in `__main__` only). Called after
    each env is built, as the import may come late; re-adding a filter moves it, never grows
    the list."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


def flat(env: gym.Env, obs: dict) -> np.ndarray:
    """The observation as the expert's MLP reads it: the Dict flattened, float32."""
    return spaces.flatten(env.observation_space, obs).astype(np.float32)


def features(env: gym.Env) -> Callable[[dict], np.ndarray]:
    """What an expert's MLP reads of the env's observations: `flat`."""
    return partial(flat, env)


def weights_path(name: str, weights_dir: str | Path = WEIGHTS_DIR) -> Path:
    """Where the expert of `name` (`cartpole-swingup`) lives."""
    return Path(weights_dir) / f"dmc-{name}.safetensors"


def shipped_tasks(weights_dir: str | Path = WEIGHTS_DIR) -> list[str]:
    """The tasks of DMC_TASKS with an expert: weights in `weights_dir`, or a scripted one."""
    return [t for t in DMC_TASKS if t in SCRIPTED or weights_path(t, weights_dir).exists()]


class DmcExpert:
    """The shipped deterministic actor of a DMC task: `act(obs dict)` -> float32 action."""

    def __init__(self, env: gym.Env, path: str | Path | None = None):
        self.features = features(env)
        name = env.unwrapped.spec.id.removeprefix("dm_control/").removesuffix("-v0")
        self.actor: MLPActor = load_actor(path or weights_path(name), env)

    def reset(self) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        return self.actor(self.features(obs))


class PointMassExpert:
    """`point_mass-easy`'s expert: a PD controller that pushes the mass to the target at the
    origin, `clip(-KP * position - KD * velocity, -1, 1)`.

    Scripted rather than trained (a departure from the other DMC tasks): its reward is zero
    until the mass is within the target's radius, which random or entropy-driven exploration
    rarely reaches, and SAC for 50k steps learned nothing (return 4.3 against random's 2.2,
    benchmarks/experts/failed/). Gains picked on seeds 1000-1004 (docs/experts.md)."""

    KP, KD = 20.0, 3.0

    def __init__(self, env: gym.Env, path: str | Path | None = None):
        shapes = {k: s.shape for k, s in env.observation_space.spaces.items()}
        if shapes != {"position": (2,), "velocity": (2,)} or env.action_space.shape != (2,):
            raise ValueError(f"PointMassExpert needs point_mass's spaces, not {shapes}")

    def reset(self) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        action = -self.KP * obs["position"] - self.KD * obs["velocity"]
        return np.clip(action, -1.0, 1.0).astype(np.float32)


SCRIPTED: dict[str, type] = {"point_mass-easy": PointMassExpert}
