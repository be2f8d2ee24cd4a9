"""What a task is: the `Task` record and the `Expert` protocol (the registry that holds tasks by
name is `opengato.tasks`; the built-in ones are made in `opengato.builtin`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym


class Expert(Protocol):
    """A demonstrator. Call `reset()` after every `env.reset()`, then `act(obs)` each step."""

    def reset(self) -> None: ...

    def act(self, obs: Any) -> Any: ...


@dataclass
class Task:
    """One environment the agent is trained and evaluated on."""

    name: str
    """Unique name, `suite/Env`, e.g. `babyai/GoToRedBall` or `classic/CartPole-v1`."""
    domain: str
    """The suite the task belongs to (`babyai`, `metaworld`, `classic`, ...)."""
    make_env: Callable[..., gym.Env]
    """`make_env(render_mode=None) -> gym.Env`, headless, spaces per the conventions."""
    make_expert: Callable[[gym.Env], Expert] | None
    """`make_expert(env) -> Expert` bound to that env, or None for dataset-only tasks."""
    max_episode_steps: int
    """Hard cap on episode length (the env truncates at or before it)."""
    success_key: str | None = None
    """Key of `info` that is truthy on success (e.g. "success"), or None."""
    expert_name: str = ""
    """Name of the demonstrating policy, recorded in dataset metadata."""
    expert_weights: Path | None = None
    """The file the expert loads its weights from, if any: its bytes are part of the hash that
    says whether a collected dataset is current, so retraining the expert (`opengato
    train-expert`) makes the task's dataset stale instead of mixing old and new demonstrations."""
    metric: str = "return"
    """What scores this task: "return" (episode return) or "success_rate" (fraction of
    successful episodes; used where returns of truncated-on-success episodes are not
    comparable, i.e. Meta-World)."""
    scores_from: str | None = None
    """Another task whose random score this one shares (same dynamics and reward, cheaper
    observations), e.g. a pixel task points at its state twin."""
    dataset: str | None = None
    """The folder of a Minari dataset holding this task's demonstrations, read instead of the
    one `opengato collect` writes under the data root (`register_minari_task` in
    opengato.data.minari_io sets it), for a task without an expert."""
