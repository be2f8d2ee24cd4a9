"""Classic control and Box2D: small hand-written controllers (returns in docs/environments.md)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class _Stateless:
    def __init__(self, env: gym.Env):
        self.env = env

    def reset(self) -> None:
        pass


class CartPoleExpert(_Stateless):
    """Push toward the side the pole falls to (angle + angular velocity, plus a little
    position/velocity feedback to keep the cart near the centre): 500 every episode."""

    def act(self, obs: np.ndarray) -> int:
        x, v, theta, omega = obs
        return int(theta + 0.5 * omega + 0.01 * x + 0.05 * v > 0)


class PendulumExpert(_Stateless):
    """Energy pumping far from the top, then a PD controller near it (about -140)."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        cos_t, sin_t, omega = obs
        theta = np.arctan2(sin_t, cos_t)  # 0 = upright
        if cos_t > 0.85:
            torque = -10.0 * theta - 2.0 * omega
        else:
            # pump energy toward that of the upright rest state (E = g/l * 1 at the top)
            energy = 0.5 * omega**2 + 10.0 * cos_t
            torque = 2.0 * np.sign(omega * (10.0 - energy)) if omega != 0 else 1.0
        return np.array([np.clip(torque, -2.0, 2.0)], np.float32)


class MountainCarExpert(_Stateless):
    """Push in the direction of the velocity (about -120, always reaches the flag)."""

    def act(self, obs: np.ndarray) -> int:
        return 2 if obs[1] >= 0 else 0


class MountainCarContinuousExpert(_Stateless):
    """Full force in the direction of the velocity (about +90)."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.array([1.0 if obs[1] >= 0 else -1.0], np.float32)


class AcrobotExpert(_Stateless):
    """Torque along the second joint's velocity, pumping energy (about -78)."""

    def act(self, obs: np.ndarray) -> int:
        return 2 if obs[5] >= 0 else 0


class LunarLanderExpert(_Stateless):
    """gymnasium's own `heuristic()` (about 265 discrete, 285 continuous)."""

    def act(self, obs: np.ndarray):
        from gymnasium.envs.box2d.lunar_lander import heuristic

        action = heuristic(self.env.unwrapped, np.asarray(obs, np.float64))
        if self.env.unwrapped.continuous:
            return np.asarray(action, np.float32)
        return int(action)


CLASSIC_EXPERTS: dict[str, type] = {
    "CartPole-v1": CartPoleExpert,
    "Pendulum-v1": PendulumExpert,
    "MountainCar-v0": MountainCarExpert,
    "MountainCarContinuous-v0": MountainCarContinuousExpert,
    "Acrobot-v1": AcrobotExpert,
    "LunarLander-v3": LunarLanderExpert,
    "LunarLanderContinuous-v3": LunarLanderExpert,
}
