"""Rollouts: the episodes of one task, played by one policy over a vector of envs.

`evaluate_task` runs `cfg.episodes` episodes of a task in lock-step batches of `cfg.num_envs`
envs (episode i resets its env with seed `cfg.start_seed + i`), all acted for by one policy
(`GatoPolicy`, or `UniformPolicy` for the uniform baseline) in one forward pass a step. Each
episode gets a record (seed, return, length, success, error); a broken env (an exception, a
non-finite observation or reward) loses its episode, not the task. The task's result is the
records and their means, before normalisation (`scores.normalize_task`).
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from opengato.agent.eval_config import EvalConfig
from opengato.tokens.spaces import all_finite, head, index, stack

MAX_PROMPT_EPISODES = 100
"""Demonstrations per task tokenised as prompt candidates (the first ones on disk)."""


class UniformPolicy:
    """Uniformly random actions (the scores table's `random` baseline), GatoPolicy's interface."""

    def __init__(self, action_space: spaces.Space, num_envs: int, seed: int = 0):
        self.action_space, self.num_envs = action_space, num_envs
        self.action_space.seed(seed)

    def reset(self, prompt=None, seed: int | None = None) -> None:
        if seed is not None:
            self.action_space.seed(seed)

    def act(self, observations: Any, active: np.ndarray | None = None) -> Any:
        samples = [self.action_space.sample() for _ in range(self.num_envs)]
        return stack(self.action_space, samples)


def load_prompts(
    task, tokenizer, env, data_dir: str | None, n_tokens: int, where: str = "end"
) -> list:
    """Tokenised successful demonstrations of `task`, each cut to its first (`where="start"`)
    or last (`"end"`) whole timesteps fitting in `n_tokens` (docs/method.md section 5).

    A task without demonstrations under `data_dir` raises DatasetError (no silent fallback to
    prompt-free acting)."""
    from opengato.agent.policy import head_timesteps, tail_timesteps
    from opengato.data.episodes import load_episodes

    episodes = load_episodes(task.name, data_dir)
    good = [e for e in episodes if e.success] or [e for e in episodes if e.success is None]
    if good and all(e.success is None for e in good):  # no success flag: the better half
        median = np.median([e.episode_return for e in good])
        good = [e for e in good if e.episode_return >= median]
    cut = head_timesteps if where == "start" else tail_timesteps
    prompts = []
    for e in good[:MAX_PROMPT_EPISODES]:
        seq = tokenizer.tokenize_episode(
            env.observation_space,
            env.action_space,
            head(env.observation_space, e.observations, len(e)),
            e.actions,
        )
        prompts.append(cut(seq, n_tokens))
    return prompts


def prompt_length(cfg: EvalConfig, checkpoint_config: dict, context_len: int) -> int:
    """Tokens per prompt: `--prompt-tokens`, else the training run's prompt length (its
    `prompt_len`, default half its context)."""
    if cfg.prompt_tokens is not None:
        return cfg.prompt_tokens
    train = checkpoint_config.get("train") or {}
    return train.get("prompt_len") or train.get("context_len", context_len) // 2


def new_episode(seed: int) -> dict:
    """The record of an episode about to start from `seed`."""
    return {"seed": seed, "return": 0.0, "length": 0, "success": None, "error": None}


def evaluate_task(task_name: str, cfg: EvalConfig, agent=None, progress=None) -> dict:
    """Run `cfg.episodes` episodes of one task; returns its results (without normalisation).

    `agent` is `(model, tokenizer, checkpoint config)` from `load_agent` (loaded here when None;
    model None: uniform actions). `progress(n)` is called as episodes finish (n = 0 after each
    lock-step)."""
    from opengato.model.checkpoint import load_agent
    from opengato.tasks import get_task

    task = get_task(task_name)
    model, tokenizer, checkpoint_config = agent or load_agent(
        cfg.checkpoint, cfg.device, cfg.start_seed
    )
    t0 = time.time()
    n = max(1, min(cfg.num_envs, cfg.episodes))
    envs = [
        task.make_env(render_mode="rgb_array" if cfg.record and k == 0 else None) for k in range(n)
    ]
    prompts: list = []
    if model is not None and cfg.prompt:
        n_tokens = prompt_length(cfg, checkpoint_config, model.cfg.context_len)
        prompts = load_prompts(task, tokenizer, envs[0], cfg.data_dir, n_tokens, cfg.prompt_from)
    policy = _make_policy(model, tokenizer, envs[0], n, cfg)
    episodes: list[dict] = []
    frames: list[np.ndarray] = []  # of the first episode, when recording
    steps = 0
    for first in range(0, cfg.episodes, n):  # episodes first .. first + n - 1, one per env
        batch = [
            new_episode(cfg.start_seed + i) for i in range(first, min(first + n, cfg.episodes))
        ]
        record = frames if cfg.record and first == 0 else None
        steps += run_batch(task, envs, policy, batch, prompts, record, cfg.record, progress)
        episodes += batch
        if progress is not None:
            progress(len(batch))
    for env in envs:
        env.close()
    result = task_result(task, episodes, len(prompts), time.time() - t0, steps)
    if frames:
        result["frames"] = frames  # turned into a GIF file by the caller
    return result


def _make_policy(model, tokenizer, env, num_envs: int, cfg: EvalConfig):
    """GatoPolicy acting for `num_envs` envs like `env`, or UniformPolicy when model is None."""
    if model is None:
        return UniformPolicy(env.action_space, num_envs, cfg.start_seed)
    from opengato.agent.policy import GatoPolicy

    return GatoPolicy(
        model,
        tokenizer,
        env.observation_space,
        env.action_space,
        num_envs,
        cfg.sample,
        cfg.temperature,
        seed=cfg.start_seed,
        overflow=cfg.overflow,
        slide_slack=cfg.slide_slack,
    )


def run_batch(
    task,
    envs: list,
    policy,
    batch: list[dict],
    prompts: list,
    frames: list | None = None,
    max_frames: int = 0,
    progress: Callable[[int], Any] | None = None,
) -> int:
    """Play the episodes of `batch` (episode k in `envs[k]`) in lock-step to their ends,
    updating their records; returns the env steps taken. `frames` (when given) collects up to
    `max_frames` renders of env 0."""
    obs_space, act_space = envs[0].observation_space, envs[0].action_space
    obs, active = _reset(envs, batch)
    if frames is not None and active[0]:
        frames.append(envs[0].render())
    # Each episode's prompt is drawn with its own seed: results do not depend on batching.
    chosen = [
        prompts[np.random.default_rng(ep["seed"]).integers(len(prompts))] if prompts else None
        for ep in batch
    ] + [None] * (len(envs) - len(batch))
    policy.reset(chosen, seed=batch[0]["seed"])
    steps = 0
    while active.any():
        for k in np.flatnonzero(active):  # a broken env loses its episode, not the task
            if not all_finite(obs_space, obs[k]):
                batch[k]["error"] = f"non-finite observation at step {batch[k]['length']}"
                active[k] = False
        if not active.any():
            break
        filler = obs[int(np.argmax(active))]  # rows of finished envs are ignored
        lanes = [o if a else filler for o, a in zip(obs, active, strict=True)]
        actions = policy.act(stack(obs_space, lanes), active)
        for k in np.flatnonzero(active):
            obs[k], over = _step(task, envs[k], index(act_space, actions, k), batch[k])
            if batch[k]["error"] is None:
                steps += 1
                if frames is not None and k == 0 and len(frames) < max_frames:
                    frames.append(envs[0].render())
            active[k] = not over
        if progress is not None:
            progress(0)
    return steps


def _reset(envs: list, batch: list[dict]) -> tuple[list, np.ndarray]:
    """Reset env k with the seed of episode k; returns (observations, which envs are playing).
    An env whose reset raises loses its episode."""
    obs: list = [None] * len(envs)
    active = np.zeros(len(envs), bool)
    for k, ep in enumerate(batch):
        try:
            obs[k], _ = envs[k].reset(seed=ep["seed"])
            active[k] = True
        except Exception:
            ep["error"] = traceback.format_exc()
    return obs, active


def _step(task, env, action: Any, ep: dict) -> tuple[Any, bool]:
    """One step of episode `ep` (its record updated); returns (observation, whether it is over).
    An exception or a non-finite reward ends the episode with an error."""
    try:
        obs, reward, terminated, truncated, info = env.step(action)
    except Exception:
        ep["error"] = traceback.format_exc()
        return None, True
    if not math.isfinite(float(reward)):
        ep["error"] = f"non-finite reward {reward} at step {ep['length']}"
        return obs, True
    ep["return"] += float(reward)
    ep["length"] += 1
    if task.success_key is not None:
        ep["success"] = bool(ep["success"]) or bool(info.get(task.success_key, False))
    return obs, bool(terminated or truncated or ep["length"] >= task.max_episode_steps)


def task_result(task, episodes: list[dict], n_prompts: int, seconds: float, steps: int) -> dict:
    """A task's results: its episode records, and the means over those without an error."""
    ok = [e for e in episodes if e["error"] is None]
    returns = np.array([e["return"] for e in ok], np.float64)
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
            float(np.mean([bool(e["success"]) for e in ok])) if task.success_key and ok else None
        ),
        "mean_length": float(np.mean([e["length"] for e in ok])) if ok else None,
        "prompts_available": n_prompts,
        "seconds": seconds,
        "steps_per_second": steps / max(seconds, 1e-9),
    }
