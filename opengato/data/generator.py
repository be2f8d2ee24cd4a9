"""The episode generator of `opengato collect`: one seeded episode of a task, expert or
uniformly random, under a wall-clock limit, as a worker process runs it; and the hash of the
code that shapes those episodes, recorded with each dataset so that stale data is collected
again rather than mixed with new.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import signal
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from opengato.tasks import Task, get_task
from opengato.tokens import spaces as space_ops

GENERATOR_VERSION = 2
"""Bump when collection changes in a way the source hash below cannot see."""

_HASHES: dict[str, tuple[str, str]] = {}


@functools.cache
def _source(obj) -> str:
    """`inspect.getsource(obj)`, read once per process: inspect reads the file on disk at the
    code's recorded lines, so an edit (a `git pull`) during a long collection would otherwise
    change the hashes of the tasks hashed after it, and re-run episodes for nothing."""
    return inspect.getsource(obj)


def _code_hashes(task: Task) -> tuple[str, str]:
    """(env part, whole) of the code hash of a task's episodes; built once per task and
    process, since it builds the env. The env part is the version, the episode runner, the
    opengato wrappers and the versions of the packages the env is made of: what shapes a
    random-policy episode. The whole adds the expert's module: data collected under other
    package versions (a new Meta-World, a new MuJoCo) is stale too."""
    if task.name not in _HASHES:
        h = hashlib.sha256(f"{GENERATOR_VERSION}:{task.name}".encode())
        h.update(_source(run_episode).encode())
        env = task.make_env()
        modules = []
        layer = env
        while isinstance(layer, gym.Wrapper):
            modules.append(type(layer).__module__)
            if type(layer).__module__.startswith("opengato"):
                h.update(_source(type(layer)).encode())
            layer = layer.env
        modules.append(type(layer).__module__)
        env.close()
        h.update(_package_versions(modules).encode())
        env_h = h.copy()
        if task.make_expert is not None:
            with contextlib.suppress(TypeError, OSError):
                h.update(_source(inspect.getmodule(task.make_expert)).encode())
        _HASHES[task.name] = env_h.hexdigest()[:16], h.hexdigest()[:16]
    return _HASHES[task.name]


# Simulators that an env's classes do not name but its episodes depend on.
_ENGINES = {"metaworld": ["mujoco"], "shimmy": ["dm_control", "mujoco"], "gymnasium": ["mujoco"]}


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """importlib's map of top-level module -> distributions, read once per process: it lists
    every installed distribution's files (~0.3 s here), which once per task cost 0.33 s of each
    task's 0.34 s hash and 50 s over the suite's 156 tasks."""
    from importlib.metadata import packages_distributions

    return packages_distributions()


def _package_versions(modules: list[str]) -> str:
    """The `name==version` of the installed distributions behind `modules` (and the simulators
    they drive), sorted; a package not installed is left out."""
    from importlib.metadata import PackageNotFoundError, version

    dists = _distributions()
    names = set()
    for top in {m.split(".")[0] for m in modules} - {"opengato"}:
        names.update(dists.get(top, [top]))
        if top != "gymnasium" or any(m.startswith("gymnasium.envs.mujoco") for m in modules):
            names.update(_ENGINES.get(top, []))
    pins = []
    for name in sorted(names):
        with contextlib.suppress(PackageNotFoundError):
            pins.append(f"{name.lower()}=={version(name)}")
    return ",".join(sorted(pins))


def random_env_task(task: Task) -> Task:
    """The task whose env runs the random episodes of `task`: itself, or for a pixel task the
    state twin it takes its scores from."""
    return get_task(task.scores_from) if task.scores_from else task


def env_hash(task: Task) -> str:
    """Hash of what shapes a random-policy episode of `task` (see `_code_hashes`): the key of
    its row in the shipped random-score table (data/random_scores.py)."""
    return _code_hashes(task)[0]


def generator_hash(task: Task) -> str:
    """Hash of what shapes a task's episodes: the version, the opengato wrappers around its
    env, the versions of the packages it is made of, the expert's module, the expert's weights
    file and the episode runner. A change means
    the task's dataset is stale and is collected again rather than mixed with new data; edits
    elsewhere (another suite's wrapper, docs) leave it current."""
    code = _code_hashes(task)[1]
    weights = task.expert_weights
    if weights is None or not Path(weights).is_file():
        return code
    # Read every time (a file of at most ~1 MB): retraining in a running process counts too.
    return hashlib.sha256(code.encode() + Path(weights).read_bytes()).hexdigest()[:16]


class EpisodeTimeout(Exception):
    """Raised inside an episode that ran past its wall-clock limit."""


def _on_alarm(signum, frame):
    raise EpisodeTimeout


def run_episode(
    task: Task, env: gym.Env, seed: int, policy: str, timeout_s: float
) -> dict[str, Any]:
    """Run one seeded episode under a wall-clock limit (SIGALRM; call from a main thread).

    `policy` is "expert" or "random". Returns a dict with the stacked episode, or with
    `error` set to the reason it was dropped (timeout, exception).
    """
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    start = time.perf_counter()
    try:
        obs, info = env.reset(seed=seed)
        if policy == "expert":
            expert = task.make_expert(env)
            expert.reset()
            act = expert.act
        else:
            env.action_space.seed(seed)

            def act(_obs):
                return env.action_space.sample()

        observations, actions, rewards = [obs], [], []
        terminated = truncated = success = False
        for _ in range(task.max_episode_steps):
            action = act(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            if task.success_key is not None:
                success = success or bool(info.get(task.success_key, False))
            if terminated or truncated:
                break
        truncated = truncated or not terminated
    except EpisodeTimeout:
        return {"seed": seed, "error": f"timeout after {timeout_s:.0f}s"}
    except Exception as e:  # an expert that raises loses the episode, not the collection
        return {"seed": seed, "error": f"{type(e).__name__}: {e}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return {
        "seed": seed,
        "error": None,
        "observations": space_ops.stack(env.observation_space, observations),
        "actions": space_ops.stack(env.action_space, actions),
        "rewards": np.asarray(rewards, np.float64),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "success": bool(success) if task.success_key is not None else None,
        "return": float(np.sum(rewards)),
        "seconds": time.perf_counter() - start,
    }


_WORKER_ENV: dict[str, gym.Env] = {}


def episodes_job(job: tuple[str, list[int], str, float]) -> list[tuple[str, str, dict]]:
    """Worker entry: run (task, seeds, policy, timeout), one episode per seed, in this order.
    Collection sends a task's episodes in runs like this so that a worker builds the task's env
    once per run rather than once per episode (a Meta-World env takes most of a second to
    build, ten times one expert episode)."""
    task_name, seeds, policy, timeout_s = job
    return [episode_job((task_name, seed, policy, timeout_s)) for seed in seeds]


def episode_job(job: tuple[str, int, str, float]) -> tuple[str, str, dict]:
    """Worker entry: run (task, seed, policy, timeout); one env per task is kept per process."""
    task_name, seed, policy, timeout_s = job
    task = get_task(task_name)
    env_task = random_env_task(task) if policy == "random" else task
    env = _WORKER_ENV.get(env_task.name)
    if env is None:
        for other in _WORKER_ENV.values():
            with contextlib.suppress(Exception):
                other.close()
        _WORKER_ENV.clear()
        env = _WORKER_ENV[env_task.name] = env_task.make_env()
    result = run_episode(env_task, env, seed, policy, timeout_s)
    if result["error"] is not None:  # the env may be mid-step: never reuse it
        _WORKER_ENV.pop(env_task.name, None)
        with contextlib.suppress(Exception):
            env.close()
    return task_name, policy, result


_source(run_episode)  # read at import, while the file is the one being run
