"""A trained expert as a tiny numpy MLP: what runs a shipped expert, with no training library.

The weights are one safetensors file: tensors `layers.{i}.weight` (out, in) and
`layers.{i}.bias` (out,), applied in order with the activation between them, and the
metadata key `opengato.actor` holding an `ActorSpec` as JSON (the task, the layer sizes,
the activation, how the last layer becomes an action). `opengato train-expert` writes them
(opengato/experts/train.py); `load_actor` reads them and refuses a file whose shapes do not
match the spec or the env's spaces.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
from safetensors.numpy import load_file, save_file

from opengato.files import atomic_path

META_KEY = "opengato.actor"
ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
}


@dataclass
class ActorSpec:
    """The architecture and provenance of an MLP actor, stored in its file's metadata."""

    task: str
    """The task it acts in, e.g. `mujoco/InvertedPendulum-v5`."""
    sizes: list[int]
    """Layer widths from input to output: [obs_dim, hidden..., act_dim]."""
    activation: str = "relu"
    """The nonlinearity between layers (`relu` or `tanh`)."""
    squash: str = "tanh"
    """How the last layer's output becomes an action: `tanh` (SAC, TD3: tanh, then scaled
    from [-1, 1] to the action bounds), `clip` (a Gaussian policy's mean, clipped) or
    `argmax` (a `Discrete` action: the index of the largest logit, PPO's deterministic
    action)."""
    action_low: list[float] = field(default_factory=list)
    """The action space's lower bounds (act_dim,); empty for `argmax`."""
    action_high: list[float] = field(default_factory=list)
    """The action space's upper bounds (act_dim,); empty for `argmax`."""
    algo: str = ""
    """The algorithm that trained it (`sac`), recorded for docs/experts.md."""
    steps: int = 0
    """Environment steps it was trained for."""
    seed: int = 0
    """The training seed."""


SQUASHES = ("tanh", "clip", "argmax")


class MLPActor:
    """The deterministic policy of an `ActorSpec`: obs (obs_dim,) -> action (act_dim,) float32,
    or an int for `argmax`."""

    def __init__(self, spec: ActorSpec, weights: list[tuple[np.ndarray, np.ndarray]]):
        self.spec = spec
        self.weights = weights
        self.low = np.asarray(spec.action_low, np.float32)
        self.high = np.asarray(spec.action_high, np.float32)
        self._act = ACTIVATIONS[spec.activation]

    def __call__(self, obs: np.ndarray) -> np.ndarray | int:
        """The action for one observation (obs_dim,): float32 (act_dim,) within the bounds, or
        the index of the largest output for `argmax`."""
        x = np.asarray(obs, np.float32).reshape(-1)
        for i, (w, b) in enumerate(self.weights):
            x = w @ x + b
            if i < len(self.weights) - 1:
                x = self._act(x)
        if self.spec.squash == "argmax":
            return int(np.argmax(x))
        if self.spec.squash == "tanh":
            x = self.low + 0.5 * (np.tanh(x) + 1.0) * (self.high - self.low)
        return np.clip(x, self.low, self.high).astype(np.float32)


def save_actor(path: str | Path, spec: ActorSpec, weights: list[tuple[np.ndarray, ...]]) -> None:
    """Write `weights` [(W (out, in), b (out,)), ...] and `spec` to a safetensors file,
    atomically."""
    tensors = {}
    for i, (w, b) in enumerate(weights):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(w, np.float32)
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(b, np.float32)
    check_shapes(path, spec, tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(asdict(spec))})
        os.chmod(tmp, 0o644)  # safetensors writes 0600; package data must be readable by all


def load_actor(
    path: str | Path, env: gym.Env | None = None, obs_dim: int | None = None
) -> MLPActor:
    """Read an actor; with `env`, also check that its input and output sizes and action
    bounds are the env's (its input is `obs_dim` values, by default the flattened size of
    the env's observation). A mismatch raises ValueError naming the file, the tensor, and the
    expected and actual shapes."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    if META_KEY not in meta:
        raise ValueError(f"{path}: not an opengato actor (no {META_KEY!r} metadata)")
    spec = ActorSpec(**json.loads(meta[META_KEY]))
    if spec.activation not in ACTIVATIONS or spec.squash not in SQUASHES:
        raise ValueError(f"{path}: unknown activation/squash {spec.activation}/{spec.squash}")
    tensors = load_file(str(path))
    check_shapes(path, spec, tensors)
    if env is not None:
        check_env_spaces(path, spec, env, obs_dim)
    n = len(spec.sizes) - 1
    weights = [(tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]) for i in range(n)]
    return MLPActor(spec, weights)


def check_shapes(path: str | Path, spec: ActorSpec, tensors: dict[str, np.ndarray]) -> None:
    """Raise ValueError unless `tensors` are exactly the layers that `spec.sizes` describe."""
    sizes = spec.sizes
    expected = {}
    for i in range(len(sizes) - 1):
        expected[f"layers.{i}.weight"] = (sizes[i + 1], sizes[i])
        expected[f"layers.{i}.bias"] = (sizes[i + 1],)
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"{path}: tensor {name!r} is missing (expected shape {shape})")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                f"expected {shape} (layer sizes {sizes})"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError(f"{path}: unexpected tensors {extra} for layer sizes {sizes}")
    act_dim = 0 if spec.squash == "argmax" else sizes[-1]
    if len(spec.action_low) != act_dim or len(spec.action_high) != act_dim:
        raise ValueError(f"{path}: action bounds must have {act_dim} values (the output size)")


def check_env_spaces(
    path: str | Path, spec: ActorSpec, env: gym.Env, obs_dim: int | None = None
) -> None:
    """Raise ValueError unless the actor's input size is `obs_dim` (default: the env's
    flattened observation size) and its output fits the env's action space: a 1-D Box with
    the same bounds, or a Discrete with one logit per action for `argmax`."""
    obs_space, act_space = env.observation_space, env.action_space
    if obs_dim is None:
        obs_dim = gym.spaces.flatdim(obs_space)
    if isinstance(act_space, gym.spaces.Discrete) and spec.squash == "argmax":
        act_dim = int(act_space.n)
    elif isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        act_dim = act_space.shape[0]
    else:
        raise ValueError(
            f"{path}: a {spec.squash!r} actor cannot act in the action space {act_space}"
        )
    checks = [
        ("layers.0.weight", (spec.sizes[1], spec.sizes[0]), (spec.sizes[1], obs_dim)),
        (f"layers.{len(spec.sizes) - 2}.weight", (spec.sizes[-1], spec.sizes[-2]),
         (act_dim, spec.sizes[-2])),
    ]  # fmt: skip
    for name, actual, expected in checks:
        if actual != expected:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {actual}, expected {expected} for the env's "
                f"observation space {obs_space} and action space {act_space}"
            )
    if spec.squash != "argmax" and not (
        np.allclose(spec.action_low, act_space.low)
        and np.allclose(spec.action_high, act_space.high)
    ):
        raise ValueError(
            f"{path}: action bounds {spec.action_low}..{spec.action_high} are not the env's "
            f"{act_space.low.tolist()}..{act_space.high.tolist()}"
        )
