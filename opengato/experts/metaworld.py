"""Meta-World v3: the scripted policies that ship with metaworld (978/1000 MT50 successes)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class MetaWorldExpert:
    """`metaworld.policies.ENV_POLICY_MAP[name]().get_action(state)`, clipped to [-1, 1].

    The scripted policy needs the full 39-float state; pixel tasks expose it as the wrapper
    attribute `state`, state tasks pass it as the observation.
    """

    def __init__(self, env: gym.Env):
        from metaworld.policies import ENV_POLICY_MAP

        self.env = env
        self.policy = ENV_POLICY_MAP[env_name(env)]()
        self.pixels = isinstance(env.observation_space, gym.spaces.Dict)

    def reset(self) -> None:
        pass

    def act(self, obs) -> np.ndarray:
        state = self.env.get_wrapper_attr("state") if self.pixels else obs
        action = self.policy.get_action(np.asarray(state, np.float64))
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def env_name(env: gym.Env) -> str:
    """Meta-World's env name (`push-v3`) from the unwrapped env's class name."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    cls = type(env.unwrapped)
    for name, env_cls in ALL_V3_ENVIRONMENTS.items():
        if env_cls is cls:
            return name
    raise ValueError(f"not a Meta-World v3 env: {cls.__name__}")
