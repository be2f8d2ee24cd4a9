"""The task registry: task name -> environment factory, expert, domain and limits.

A task is what the rest of opengato trains and evaluates on: `babyai/GoToRedBall`,
`metaworld/push-v3`, `metaworld-pixels/push-v3`, `classic/CartPole-v1`, ... Every
environment is wrapped so that its spaces follow the conventions the tokenizer relies on:

- a `Box` of dtype uint8 and shape (H, W, 3) or (H, W, 1) is an image, and only images are;
- continuous values are float `Box`es (bounds may be infinite);
- discrete values are `Discrete`, `MultiDiscrete`, `MultiBinary` or integer `Box`es whose
  bounds really bound them, all below 1024;
- text is a `gymnasium.spaces.Text`.

Observation layouts of the built-in suites:

| suite | observation | action |
| --- | --- | --- |
| `babyai/*` | Dict(direction: Discrete(4), grid: int64 Box (7, 7, 3) in [0, (10, 5, 2)], mission: Text) | Discrete(7) |
| `metaworld/*` | float32 Box (39,), unbounded | float32 Box (4,) in [-1, 1] |
| `metaworld-pixels/*` | Dict(image: uint8 (64, 64, 3), proprio: float32 Box (4,)) | float32 Box (4,) in [-1, 1] |
| `classic/*` | float32 Box, unbounded | gymnasium's own (Discrete or float Box) |

Adding a task takes a few lines::

    register_task(Task(
        name="mysuite/MyEnv-v0", domain="mysuite",
        make_env=lambda seed=None, render_mode=None: gym.make("MyEnv-v0", render_mode=render_mode),
        make_expert=lambda env: MyExpert(env), max_episode_steps=200, expert_name="my-expert",
    ))

or `register_gym_task("mysuite/MyEnv-v0", "MyEnv-v0", expert=...)`. A task whose data only
comes from a Minari dataset passes `make_expert=None`.

Room left for suites with trained experts (Atari via ale-py, MinAtar, DM Control, gymnasium
MuJoCo locomotion): each becomes one `opengato/experts/<suite>.py` holding a policy loader and
one `_register_<suite>()` function here; nothing else in the package changes.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces


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
    """`make_env(seed=None, render_mode=None) -> gym.Env`, headless, spaces per the conventions."""
    make_expert: Callable[[gym.Env], Expert] | None
    """`make_expert(env) -> Expert` bound to that env, or None for dataset-only tasks."""
    max_episode_steps: int
    """Hard cap on episode length (the env truncates at or before it)."""
    success_key: str | None = None
    """Key of `info` that is truthy on success (e.g. "success"), or None."""
    expert_name: str = ""
    """Name of the demonstrating policy, recorded in dataset metadata."""
    metric: str = "return"
    """What scores this task: "return" (episode return) or "success_rate" (fraction of
    successful episodes; used where returns of truncated-on-success episodes are not
    comparable, i.e. Meta-World)."""
    scores_from: str | None = None
    """Another task whose random score this one shares (same dynamics and reward, cheaper
    observations), e.g. a pixel task points at its state twin."""


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add a task to the registry and return it; re-registering a name needs `overwrite`."""
    if task.name in _REGISTRY and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered (pass overwrite=True)")
    if "/" not in task.name:
        raise ValueError(f"task names look like 'suite/Env', got {task.name!r}")
    _REGISTRY[task.name] = task
    return task


def register_gym_task(
    name: str,
    env_id: str,
    expert: Callable[[gym.Env], Expert] | None = None,
    *,
    max_episode_steps: int | None = None,
    success_key: str | None = None,
    expert_name: str = "",
    **env_kwargs: Any,
) -> Task:
    """Register any gymnasium env id as task `name` (`suite/Env`), with an optional expert."""

    def make_env(seed: int | None = None, render_mode: str | None = None) -> gym.Env:
        return gym.make(env_id, render_mode=render_mode, **env_kwargs)

    if max_episode_steps is None:
        spec = gym.spec(env_id)
        max_episode_steps = spec.max_episode_steps or 1000
    return register_task(
        Task(
            name=name,
            domain=name.split("/")[0],
            make_env=make_env,
            make_expert=expert,
            max_episode_steps=max_episode_steps,
            success_key=success_key,
            expert_name=expert_name or (getattr(expert, "__name__", "") if expert else ""),
        )
    )


def get_task(name: str) -> Task:
    """Look a task up by name; an unknown name raises KeyError listing close matches."""
    _ensure_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(
        f"unknown task {name!r}.{hint} (`opengato.tasks.list_tasks()` lists all "
        f"{len(_REGISTRY)} tasks)"
    )


def list_tasks(pattern: str | None = None) -> list[str]:
    """Task names matching a glob (`babyai/*`, `*push*`) or a suite name (`classic`), sorted."""
    _ensure_builtin()
    names = sorted(_REGISTRY)
    if pattern is None or pattern in ("*", "all"):
        return names
    if any(t.domain == pattern for t in _REGISTRY.values()):
        return [n for n in names if _REGISTRY[n].domain == pattern]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


# The corpora (opengato/data/corpora.py) by name -> (source kind, domain), and the aliases that expand
# to several of them.
CORPORA: dict[str, tuple[str, str]] = {
    "text/python-docs": ("text", "text"),
    "text/qa": ("qa", "qa"),
    "vision/scenes": ("captions", "captions"),
    "vision/photos": ("captions", "captions"),
}
CORPUS_ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("text/python-docs", "text/qa"),
    "qa": ("text/qa",),
    "vision": ("vision/scenes", "vision/photos"),
    "captions": ("vision/scenes", "vision/photos"),
}


def select(spec: str | list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The one `--tasks` grammar of every verb: (control task names, corpus names), order kept.

    Items, comma-separated: `all` (every task and corpus), `default` (DEFAULT_TASKS and every
    corpus), a suite (`classic`), a glob (`babyai/*`, `text/*`), a task name, a corpus name
    (`text/qa`) or a corpus alias (`text`, `qa`, `vision`, `captions`). An unknown name raises
    KeyError with close matches; a glob that matches nothing raises too.

    >>> select("classic/CartPole-v1,qa")
    (['classic/CartPole-v1'], ['text/qa'])
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    control: list[str] = []
    corpora: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item == "all":
            tasks, corp = list_tasks(), list(CORPORA)
        elif item == "default":
            tasks, corp = list(DEFAULT_TASKS), list(CORPORA)
        elif item in CORPUS_ALIASES:
            tasks, corp = [], list(CORPUS_ALIASES[item])
        elif item in CORPORA:
            tasks, corp = [], [item]
        elif any(c in item for c in "*?["):
            corp = [c for c in CORPORA if fnmatch.fnmatchcase(c, item)]
            tasks = list_tasks(item)
            if not tasks and not corp:
                raise KeyError(f"no task or corpus matches {item!r}")
        else:
            tasks, corp = resolve_tasks([item]), []
        control.extend(t for t in tasks if t not in control)
        corpora.extend(c for c in corp if c not in corpora)
    return control, corpora


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """Expand comma-separated names, globs and suite names into task names (order kept).

    An unknown name raises KeyError with close matches; a glob matching nothing raises too.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if any(c in item for c in "*?[") or item in _suites():
            matched = list_tasks(item)
            if not matched:
                raise KeyError(f"no task matches {item!r}")
        else:
            matched = [get_task(item).name]
        out.extend(m for m in matched if m not in out)
    return out


def _suites() -> set[str]:
    _ensure_builtin()
    return {t.domain for t in _REGISTRY.values()}


# --------------------------------------------------------------------------- wrappers


class UnboundedFloatObs(gym.ObservationWrapper):
    """Float32 observations in an unbounded Box: simulators step outside their declared
    bounds (Meta-World's goal slots, LunarLander when crashing), and the tokenizer rejects
    values outside the space."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        shape = env.observation_space.shape
        self.observation_space = spaces.Box(-np.inf, np.inf, shape, np.float32)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(obs, dtype=np.float32)


# BabyAI grid cells are (object, colour, state) indices: objects 0..10, colours 0..5, states 0..2.
BABYAI_GRID_HIGH = np.array([10, 5, 2], dtype=np.int64)
BABYAI_MISSION_CHARSET = "abcdefghijklmnopqrstuvwxyz0123456789 ,.'"
BABYAI_MISSION_MAX_LEN = 512


class BabyAIObs(gym.ObservationWrapper):
    """BabyAI's observation as Dict(direction, grid, mission).

    The 7x7x3 view is a grid of *discrete* indices, so it becomes an int64 Box bounded by
    the real index ranges (a uint8 HxWx3 Box would read as an image). The mission becomes a
    `Text` space (Minari cannot serialise minigrid's MissionSpace). Resets run quietly:
    minigrid prints "Sampling rejected" lines to stdout.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        high = np.broadcast_to(BABYAI_GRID_HIGH, (7, 7, 3)).copy()
        self.observation_space = spaces.Dict(
            {
                "direction": spaces.Discrete(4),
                "grid": spaces.Box(np.zeros_like(high), high, (7, 7, 3), np.int64),
                "mission": spaces.Text(
                    max_length=BABYAI_MISSION_MAX_LEN, charset=BABYAI_MISSION_CHARSET
                ),
            }
        )

    def reset(self, **kwargs):
        with contextlib.redirect_stdout(io.StringIO()):
            return super().reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["success"] = bool(terminated and reward > 0)  # BabyAI rewards only success
        return obs, reward, terminated, truncated, info

    def observation(self, obs: dict) -> dict:
        return {
            "direction": int(obs["direction"]),
            "grid": np.asarray(obs["image"], dtype=np.int64),
            "mission": obs["mission"],
        }


class MetaWorldEpisode(gym.Wrapper):
    """Deterministic per-seed Meta-World episodes that stop shortly after success.

    `reset(seed=s)` seeds the env so that the goal/object variation (one of the 50 MT1
    tasks) is drawn from the seeded generator: the same seed gives the same episode. Scripted episodes never terminate on their own; we truncate
    `steps_after_success` steps after the first success so that demonstrations are short
    (500 steps x 44 tokens would dwarf a small model's context) yet still show the hold.
    """

    def __init__(self, env: gym.Env, steps_after_success: int = 10):
        super().__init__(env)
        self.steps_after_success = steps_after_success
        self._since_success: int | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        import mujoco

        self._since_success = None
        base = self.env.unwrapped
        if seed is not None:
            # SawyerXYZEnv.reset ignores its seed; its own seed() reseeds the generator the
            # task selection and object placement draw from.
            base.seed(seed)
        # reset_model only re-places objects and lets the arm settle from where it was:
        # clearing the physics state first makes the episode a function of the seed alone.
        mujoco.mj_resetData(base.model, base.data)
        return self.env.reset(options=options)

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._since_success is None and info.get("success", 0.0) > 0:
            self._since_success = 0
        elif self._since_success is not None:
            self._since_success += 1
        if self._since_success is not None and self._since_success >= self.steps_after_success:
            truncated = True
        return obs, float(reward), terminated, truncated, info


META_WORLD_PIXEL_SIZE = 64
META_WORLD_PROPRIO = 4  # hand xyz and gripper opening: the first 4 state floats


class MetaWorldPixels(gym.ObservationWrapper):
    """Dict(image: uint8 64x64x3 from the "corner" camera, proprio: hand xyz + gripper).

    Shadows and reflections are switched off (5x faster software rendering); the corner
    camera renders upside down, so the image is flipped vertically. The full state stays
    readable as `self.state` for the scripted expert (which needs object positions).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        size = META_WORLD_PIXEL_SIZE
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (size, size, 3), np.uint8),
                "proprio": spaces.Box(-np.inf, np.inf, (META_WORLD_PROPRIO,), np.float32),
            }
        )
        self.state: np.ndarray | None = None
        self._flags_set = False

    def _render(self) -> np.ndarray:
        import mujoco

        renderer = self.env.unwrapped.mujoco_renderer
        if not self._flags_set:
            viewer = renderer._get_viewer("rgb_array")
            viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._flags_set = True
        return np.ascontiguousarray(renderer.render("rgb_array")[::-1])

    def observation(self, obs: np.ndarray) -> dict:
        self.state = np.asarray(obs, np.float32)
        return {"image": self._render(), "proprio": self.state[:META_WORLD_PROPRIO].copy()}


# --------------------------------------------------------------------------- suites

# Levels whose bot fails or loops (docs/environments.md): KeyInBox and PutNext*Carrying raise,
# OpenDoorsOrderN{2,4}Debug succeed 7/20 and 2/20.
BABYAI_SKIP = {
    "KeyInBox",
    "PutNextS5N2Carrying",
    "PutNextS6N3Carrying",
    "PutNextS7N4Carrying",
    "OpenDoorsOrderN2Debug",
    "OpenDoorsOrderN4Debug",
}

META_WORLD_PIXEL_TASKS = ("reach-v3", "button-press-topdown-v3", "drawer-close-v3", "push-v3")

CLASSIC_ENVS = (
    "CartPole-v1",
    "Pendulum-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Acrobot-v1",
    "LunarLander-v3",
    "LunarLanderContinuous-v3",
)


def _babyai_level(env_id: str) -> str:
    return env_id.removeprefix("BabyAI-").rsplit("-v", 1)[0]


def _register_babyai() -> None:
    import minigrid  # noqa: F401  (registers the BabyAI ids)

    from opengato.experts.babyai import BabyAIExpert

    for env_id in [k for k in gym.registry if k.startswith("BabyAI-")]:
        level = _babyai_level(env_id)
        if level in BABYAI_SKIP:
            continue

        def make_env(seed=None, render_mode=None, _id=env_id):
            return BabyAIObs(gym.make(_id, render_mode=render_mode, disable_env_checker=True))

        register_task(
            Task(
                name=f"babyai/{level}",
                domain="babyai",
                make_env=make_env,
                make_expert=BabyAIExpert,
                max_episode_steps=_babyai_max_steps(env_id),
                success_key="success",
                expert_name="minigrid.BabyAIBot",
            )
        )


def _babyai_max_steps(env_id: str, probes: int = 3) -> int:
    # minigrid sets max_steps at reset from the mission (more sub-goals, more steps) and
    # truncates by itself (that limit is authoritative); the task cap is the largest seen
    # over a few seeds (~2 ms each), a guide for rollout buffers.
    env = gym.make(env_id, disable_env_checker=True)
    steps = 0
    for seed in range(probes):
        with contextlib.redirect_stdout(io.StringIO()):
            env.reset(seed=seed)
        steps = max(steps, int(env.unwrapped.max_steps))
    env.close()
    return steps


def _make_metaworld(env_name: str, render_mode: str | None, pixels: bool) -> gym.Env:
    import metaworld  # noqa: F401  (registers Meta-World/MT1)

    kwargs: dict[str, Any] = {"env_name": env_name, "seed": 0, "disable_env_checker": True}
    if pixels or render_mode is not None:
        kwargs.update(
            render_mode="rgb_array",
            camera_name="corner",
            width=META_WORLD_PIXEL_SIZE,
            height=META_WORLD_PIXEL_SIZE,
        )
    env: gym.Env = gym.make("Meta-World/MT1", **kwargs)
    env = MetaWorldEpisode(env)
    return MetaWorldPixels(env) if pixels else UnboundedFloatObs(env)


def _register_metaworld() -> None:
    # MuJoCo reads MUJOCO_GL once, when Meta-World first imports it: default to EGL, which
    # renders headless out of the box (docs/environments.md), unless the user chose a backend.
    # Done here, when the registry is first used, not as a side effect of importing opengato.
    os.environ.setdefault("MUJOCO_GL", "egl")
    from metaworld.policies import ENV_POLICY_MAP

    from opengato.experts.metaworld import MetaWorldExpert

    for env_name in sorted(ENV_POLICY_MAP):
        for pixels in (False, True):
            if pixels and env_name not in META_WORLD_PIXEL_TASKS:
                continue

            def make_env(seed=None, render_mode=None, _n=env_name, _p=pixels):
                return _make_metaworld(_n, render_mode, _p)

            suite = "metaworld-pixels" if pixels else "metaworld"
            register_task(
                Task(
                    name=f"{suite}/{env_name}",
                    domain=suite,
                    make_env=make_env,
                    make_expert=MetaWorldExpert,
                    max_episode_steps=500,
                    success_key="success",
                    expert_name=f"metaworld.policies.{ENV_POLICY_MAP[env_name].__name__}",
                    metric="success_rate",
                    scores_from=f"metaworld/{env_name}" if pixels else None,
                )
            )


def _register_classic() -> None:
    from opengato.experts.classic import CLASSIC_EXPERTS

    for env_id in CLASSIC_ENVS:

        def make_env(seed=None, render_mode=None, _id=env_id):
            env = gym.make(_id, render_mode=render_mode, disable_env_checker=True)
            return UnboundedFloatObs(env)

        expert_cls = CLASSIC_EXPERTS[env_id]
        register_task(
            Task(
                name=f"classic/{env_id}",
                domain="classic",
                make_env=make_env,
                make_expert=expert_cls,
                max_episode_steps=gym.spec(env_id).max_episode_steps,
                success_key=None,
                expert_name=expert_cls.__name__,
            )
        )


_BUILTIN_DONE = False


def _ensure_builtin() -> None:
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    _register_classic()
    _register_babyai()
    _register_metaworld()


# A small mix for demos: easy levels of each suite (all solved by their experts), chosen so that
# one small model trained for minutes on 2 CPU cores reaches most of them (README).
DEFAULT_TASKS: tuple[str, ...] = (
    "babyai/GoToRedBallNoDists",
    "babyai/GoToRedBall",
    "babyai/GoToObj",
    "babyai/OpenRedDoor",
    "metaworld/reach-v3",
    "metaworld/button-press-topdown-v3",
    "metaworld/drawer-close-v3",
    "metaworld/door-open-v3",
    "classic/CartPole-v1",
    "classic/MountainCar-v0",
    "classic/Acrobot-v1",
    "classic/MountainCarContinuous-v0",
)
