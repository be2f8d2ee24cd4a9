"""Rollouts: the episodes of tasks, played by policies over vectors of envs.

A task's `cfg.episodes` episodes are played in lock-step batches of `cfg.num_envs` envs
(episode i resets its env with seed `cfg.start_seed + i`), each batch acted for by one policy
(`GatoPolicy`, or `UniformPolicy` for the uniform baseline) in one forward pass a step. Each
episode is prompted with one of its task's demonstrations (agent/prompts.py). Each episode gets
a record (seed, return, length, success, error, and whether a demonstration began with its first
observation); a broken env (an exception, a non-finite observation or reward, a dead env worker)
loses its episode, not the task. The task's result is the records and their means, before
normalisation (`scores.normalize_task`).

`play_batch` is that lock-step loop, written as a generator: it yields the env operations a
step needs (resets, then steps) and is sent their outcomes, so the same loop runs whoever steps
the envs. Two drivers run it:

- `evaluate_task`: one task, its batches one after another, its envs in this process (what
  `opengato eval` does by default, and what each `--workers` process does);
- `evaluate_concurrently` (agent/concurrent.py): up to `cfg.concurrent_tasks` tasks at once, every batch of each in
  flight together with a policy of its own, their envs stepped in `cfg.env_workers` processes
  (`workers.EnvPool`, which also reads the prompts); this process holds the one model and runs
  one batch's forward passes while the workers step the others' envs.

A batch's episodes, prompts, policy seed and forward passes are the same under both, so are the
records (tests/test_evaluate.py checks that they are identical). `cfg.group_tasks` > 1 is the
one option that changes the batches: tasks of a domain whose envs have the same spaces then play
batch b as one batch, fewer and larger forward passes for the same episodes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import traceback
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
from gymnasium import spaces

from opengato.agent.eval_config import EvalConfig
from opengato.agent.prompts import Prompts, choose_prompt, env_prompts, prompt_source
from opengato.seeds import start_key
from opengato.tokens.spaces import (
    finite_rows,
    stack,
    take,
    unstack,
)


class UniformPolicy:
    """Uniformly random actions (the scores table's `random` baseline), GatoPolicy's interface."""

    def __init__(self, action_space: spaces.Space, num_envs: int, seed: int = 0):
        # A copy: batches played at once each draw from a generator of their own.
        self.action_space, self.num_envs = copy.deepcopy(action_space), num_envs
        self.action_space.seed(seed)

    def reset(self, prompt=None, seed: int | None = None) -> None:
        if seed is not None:
            self.action_space.seed(seed)

    def act(self, observations: Any, active: np.ndarray | None = None) -> Any:
        samples = [self.action_space.sample() for _ in range(self.num_envs)]
        return stack(self.action_space, samples)


def new_episode(seed: int) -> dict:
    """The record of an episode about to start from `seed`."""
    return {"seed": seed, "return": 0.0, "length": 0, "success": None, "error": None,
            "seen_start": None}  # fmt: skip


def batch_size(cfg: EvalConfig) -> int:
    """Envs per lock-step batch (and rows of its policy)."""
    return max(1, min(cfg.num_envs, cfg.episodes))


def episode_batches(cfg: EvalConfig) -> list[list[dict]]:
    """The task's episodes in lock-step batches of `num_envs`: episodes first .. first + n - 1
    share a batch (and its policy)."""
    n = batch_size(cfg)
    return [
        [new_episode(cfg.start_seed + i) for i in range(first, min(first + n, cfg.episodes))]
        for first in range(0, cfg.episodes, n)
    ]


def make_policy(agent, obs_space, act_space, num_envs: int, cfg: EvalConfig, groups=None):
    """GatoPolicy acting for `num_envs` envs with these spaces (`groups`: the envs of each of
    several spaces, the spaces lists), or UniformPolicy when the agent has no model (it has
    no forwards to share, so it plays tasks of other spaces apart)."""
    model, tokenizer, _ = agent
    if model is None:
        if groups is not None:
            raise ValueError("uniform actions play each task's spaces apart (no --mix-spaces)")
        return UniformPolicy(act_space, num_envs, cfg.start_seed)
    from opengato.agent.policy import GatoPolicy

    weights = cfg.weights
    if weights == "auto":  # CUDA graphs on a GPU, packed weights on a CPU
        weights = "compiled" if next(model.parameters()).is_cuda else "packed"
    return GatoPolicy(
        model,
        tokenizer,
        obs_space,
        act_space,
        num_envs,
        cfg.sample,
        cfg.temperature,
        seed=cfg.start_seed,
        overflow=cfg.overflow,
        slide_slack=cfg.slide_slack,
        packed=weights == "packed",
        compile=weights == "compiled",
        groups=groups,
    )


# --------------------------------------------------------------------------- one batch


def env_reset(env, task, seed: int, render: bool) -> dict:
    """Reset `env` with `seed`: {"obs"} (and "frame" when `render`), or {"error"} when the env
    raises. Runs where the env lives (here or in an env worker)."""
    try:
        obs, _ = env.reset(seed=seed)
    except Exception:
        return {"error": traceback.format_exc()}
    return {"obs": obs, "frame": env.render()} if render else {"obs": obs}


def env_step(env, task, action: Any, render: bool) -> dict:
    """One step of `env`: {"obs", "reward", "done", "success"} (and "frame" when `render`), or
    {"error"} when the env raises. Runs where the env lives."""
    try:
        obs, reward, terminated, truncated, info = env.step(action)
        reward = float(reward)
    except Exception:
        return {"error": traceback.format_exc()}
    out = {"obs": obs, "reward": reward, "done": bool(terminated or truncated)}
    out["success"] = bool(info.get(task.success_key, False)) if task.success_key else None
    if render:
        out["frame"] = env.render()
    return out


EnvOps = list[tuple[int, Callable, tuple]]
"""What `play_batch` asks for: (env k of the batch, `env_reset` or `env_step`, its arguments)."""


def play_batch(
    policy,
    obs_space: spaces.Space,
    act_space: spaces.Space,
    tasks: list,
    batch: list[dict],
    prompts: list[list],
    frames: dict[int, list] | None = None,
    max_frames: int = 0,
    progress: Callable[[int], Any] | None = None,
    prompt_choice: str = "random",
    groups: list[list[int]] | None = None,
) -> Generator[EnvOps, list[dict], None]:
    """Play the episodes of `batch` in lock-step to their ends, updating their records: episode
    k in env k, of task `tasks[k]`, prompted from `prompts[k]` (its task's candidates, chosen
    per `prompt_choice`: `choose_prompt`). Yields the env ops each step needs and is sent their
    outcomes, in the same order. `frames` maps envs to lists that collect up to `max_frames`
    renders of them. `groups` (a policy for envs of several spaces): the envs of each space
    group, `obs_space` and `act_space` then lists of a space per group."""
    frames = frames or {}
    n = policy.num_envs
    parts = (list(zip(obs_space, act_space, map(np.asarray, groups), strict=True)) if groups
             else [(obs_space, act_space, np.arange(n))])  # fmt: skip
    space_of = {int(k): o for o, _, envs in parts for k in envs}
    out = yield [(k, env_reset, (ep["seed"], k in frames)) for k, ep in enumerate(batch)]
    obs: list = [None] * n
    active = np.zeros(n, bool)
    for k, (ep, r) in enumerate(zip(batch, out, strict=True)):
        if "error" in r:  # a reset that raises loses its episode
            ep["error"] = r["error"]
        else:
            obs[k], active[k] = r["obs"], True
            if k in frames:
                frames[k].append(r["frame"])
    chosen = [
        choose_prompt(p, ep["seed"], space_of[k], obs[k], prompt_choice)
        for k, (ep, p) in enumerate(zip(batch, prompts, strict=True))
    ] + [None] * (n - len(batch))
    for k, (ep, p) in enumerate(zip(batch, prompts, strict=True)):
        if isinstance(p, Prompts) and obs[k] is not None:  # did a demonstration start here?
            ep["seen_start"] = start_key(space_of[k], obs[k]) in p.seen
    policy.reset(chosen, seed=batch[0]["seed"])
    while active.any():
        lanes = [_stacked(space, envs, obs, active, batch) for space, _, envs in parts]
        if not active.any():
            break
        acts = policy.act(lanes if groups else lanes[0], active)
        actions: list = [None] * n
        for (_, a_space, envs), a, lane in zip(parts, acts if groups else [acts], lanes,
                                               strict=True):  # fmt: skip
            if lane is not None:  # a space group whose envs have all ended acts no more
                for k, value in zip(envs, unstack(a_space, a, len(envs)), strict=True):
                    actions[k] = value
        live = [int(k) for k in np.flatnonzero(active)]
        render = {k for k in live if k in frames and len(frames[k]) < max_frames}
        out = yield [(k, env_step, (actions[k], k in render)) for k in live]
        for k, r in zip(live, out, strict=True):
            obs[k], over = _record_step(tasks[k], batch[k], r)
            if k in render and batch[k]["error"] is None:
                frames[k].append(r["frame"])
            active[k] = not over
        if progress is not None:
            progress(0)


def _stacked(space: spaces.Space, envs: np.ndarray, obs: list, active: np.ndarray,
             batch: list[dict]) -> Any:  # fmt: skip
    """The observations of `envs` (of one space) as a batch, the first active env's in the rows
    of those that are not (ignored); None when none is active. Only the active envs'
    observations are stacked, so that a big batch's stragglers stay cheap. An active env whose
    observation is not finite loses its episode (its row is ignored from now on), not the task."""
    live = np.flatnonzero(active[envs])
    if not len(live):
        return None
    lanes = stack(space, [obs[k] for k in envs[live]])
    for k in envs[live[~finite_rows(space, lanes)]]:
        batch[k]["error"] = f"non-finite observation at step {batch[k]['length']}"
        active[k] = False
    if len(live) == len(envs):
        return lanes
    rows = np.zeros(len(envs), np.int64)  # an inactive env's row: the first active one's
    rows[live] = np.arange(len(live))
    return take(space, lanes, rows)


def _record_step(task, ep: dict, r: dict) -> tuple[Any, bool]:
    """Add a step's outcome `r` (from `env_step`) to the record of its episode; returns (the
    observation, whether the episode is over). An exception or a non-finite reward ends the
    episode with an error."""
    if "error" in r:
        ep["error"] = r["error"]
        return None, True
    if not math.isfinite(r["reward"]):
        ep["error"] = f"non-finite reward {r['reward']} at step {ep['length']}"
        return r["obs"], True
    ep["return"] += r["reward"]
    ep["length"] += 1
    if task.success_key is not None:
        ep["success"] = bool(ep["success"]) or r["success"]
    return r["obs"], r["done"] or ep["length"] >= task.max_episode_steps


def task_result(task, episodes: list[dict], n_prompts: int, seconds: float) -> dict:
    """A task's results: its episode records, and the means over those without an error. A
    success rate counts a failed episode as no success (as the expert's does: data/finishing.py);
    a task whose every episode failed gets an `error`, so it counts as unscored, not as absent."""
    ok = [e for e in episodes if e["error"] is None]
    steps = sum(e["length"] for e in episodes)  # the env steps that went through
    returns = np.array([e["return"] for e in ok], np.float64)
    failed = (
        {"error": f"every episode failed: {episodes[0]['error']}"} if episodes and not ok else {}
    )
    return {
        "task": task.name,
        "domain": task.domain,
        "metric": task.metric,
        "episodes": episodes,
        "n_episodes": len(episodes),
        "n_errors": len(episodes) - len(ok),
        "mean_return": float(returns.mean()) if len(ok) else None,
        "std_return": float(returns.std()) if len(ok) else None,
        "success_rate": (
            float(np.mean([e["error"] is None and bool(e["success"]) for e in episodes]))
            if task.success_key and ok
            else None
        ),
        "mean_length": float(np.mean([e["length"] for e in ok])) if ok else None,
        # episodes whose first observation a demonstration began with (None: not checked)
        "seen_starts": sum(e.get("seen_start") is True for e in episodes)
        if any(e.get("seen_start") is not None for e in episodes)
        else None,
        "prompts_available": n_prompts,
        "seconds": seconds,
        "steps_per_second": steps / max(seconds, 1e-9),
        **failed,
    }


# --------------------------------------------------------------------------- one task, here


def evaluate_task(task_name: str, cfg: EvalConfig, agent=None, progress=None) -> dict:
    """Run `cfg.episodes` episodes of one task, batch after batch, its envs in this process;
    returns its results (without normalisation).

    `agent` is `(model, tokenizer, checkpoint config)` from `load_agent` (loaded here when None;
    model None: uniform actions). `progress(n)` is called as episodes finish (n = 0 after each
    lock-step)."""
    from opengato.model.checkpoint import load_agent
    from opengato.tasks import get_task

    task = get_task(task_name)
    agent = agent or load_agent(cfg.checkpoint, cfg.device, cfg.start_seed, cfg.weights == "int8")
    t0 = time.time()
    n = batch_size(cfg)
    envs = [
        task.make_env(render_mode="rgb_array" if cfg.record and k == 0 else None) for k in range(n)
    ]
    obs_space, act_space = envs[0].observation_space, envs[0].action_space
    source = prompt_source(agent, cfg)
    prompts = env_prompts(envs[0], task, *source) if source else []
    policy = make_policy(agent, obs_space, act_space, n, cfg)
    episodes: list[dict] = []
    frames: list[np.ndarray] = []  # of the first episode, when recording
    for b, batch in enumerate(episode_batches(cfg)):
        record = {0: frames} if cfg.record and b == 0 else None
        tasks = [task] * len(batch)
        play = play_batch(policy, obs_space, act_space, tasks, batch, [prompts] * len(batch),
                          record, cfg.record, progress, cfg.prompt_choice)  # fmt: skip
        _play_here(play, envs, tasks)
        episodes += batch
        if progress is not None:
            progress(len(batch))
    for env in envs:
        env.close()
    result = task_result(task, episodes, len(prompts), time.time() - t0)
    if frames:
        result["frames"] = frames  # turned into a GIF file by the caller
    return result


def _play_here(play: Generator[EnvOps, list[dict], None], envs: list, tasks: list) -> None:
    """Run `play_batch` to its end with its envs (env k: `envs[k]`, of task `tasks[k]`)
    stepped in this process."""
    with contextlib.suppress(StopIteration):
        ops = next(play)
        while True:
            ops = play.send([fn(envs[k], tasks[k], *args) for k, fn, args in ops])
