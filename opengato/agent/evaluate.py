"""Evaluation: roll a checkpoint out on tasks, normalise scores, aggregate (docs/method.md section 6, docs/evaluation.md).

`opengato eval runs/x` runs `episodes` rollouts per task (episode i resets its env
with seed `start_seed + i`, by default from `seeds.EVAL_SEED_START`, a stream no demonstration
uses; seeds that a task's demonstrations used are refused) in lock-step batches of `num_envs` envs through one `GatoPolicy`,
and writes one JSON file: per-task returns, success rates, lengths and the expert-normalised
score `100 * (score - random) / (expert - random)`, per-domain and overall mean / median / IQM
with bootstrap 95% confidence intervals, and the resolved config, checkpoint hash, seeds, git
commit and timestamps. The file is rewritten atomically after every task, so `--resume`
continues a killed evaluation without redoing finished tasks.

Baselines: `opengato eval random:gato-tiny` evaluates a randomly initialised model of a preset
(seeded by `start_seed`), and `opengato eval uniform` samples actions uniformly from the action
space (what the scores table's `random` column measures, so it should score about 0).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime
import json
import math
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from gymnasium import spaces
from tyro.conf import Positional, arg

from opengato.files import atomic_write_json, git_commit
from opengato.seeds import EVAL_SEED_START

RESULTS_VERSION = 2
MAX_PROMPT_EPISODES = 100
"""Demonstrations per task tokenised as prompt candidates (the first ones on disk)."""


@dataclass
class EvalConfig:
    """Roll out a checkpoint and compute expert-normalised scores."""

    checkpoint: Positional[Annotated[str, arg(metavar="CHECKPOINT")]]
    """Checkpoint folder or run folder; `random:<preset>` for a random-init model of a preset;
    `uniform` for uniformly random actions."""
    tasks: list[str] = field(default_factory=list)
    """Task names, globs or suites (`classic/CartPole-v1`, `babyai/*`, `metaworld`); empty: the
    tasks the checkpoint was trained on (its config.json), or the default demo tasks."""
    episodes: int = 50
    """Rollouts per task (the paper: 50)."""
    start_seed: int = EVAL_SEED_START
    """Episode i resets its env with seed start_seed + i (default 1000000: held-out start
    states; demonstrations use seeds from 0); also seeds sampling and the choice of prompts."""
    allow_seen_seeds: bool = False
    """Evaluate even on seeds that a task's demonstrations used (the score then measures recall
    of seen start states, not a policy; the results file says so)."""
    num_envs: int = 8
    """Envs stepped in lock-step per task, batched through one forward pass."""
    workers: int = 1
    """Processes evaluating different tasks in parallel (each loads the model)."""
    sample: Literal["greedy", "temperature"] = "greedy"
    """How action tokens are chosen."""
    temperature: float = 1.0
    """Sampling temperature when sample is `temperature`."""
    prompt: bool = True
    """Prepend a successful demonstration of the task (from data_dir) to each episode."""
    prompt_tokens: int | None = None
    """Most tokens of a prompt (whole timesteps). None: the training run's prompt length
    (`--prompt-len`, default half the context), so acting sees prompts like training did."""
    prompt_from: Literal["end", "start"] = "end"
    """Which part of the demonstration the prompt is: its last timesteps (`end`: goal
    conditioning, as half of the training prompts) or its first (`start`: the paper's
    deployment reading)."""
    overflow: Literal["slide", "reprefill"] = "slide"
    """When the window is full: `slide` crops the KV cache (fast), `reprefill` recomputes the
    last context_len tokens from scratch (exactly what a fresh forward would attend to)."""
    slide_slack: int = 0
    """With `slide`: drop this many extra tokens per crop, so crops happen every few steps."""
    data_dir: str | None = None
    """Data root with scores.json (normalisation) and the demonstrations (prompts); None: the
    default data root ($OPENGATO_DATA)."""
    out: str = "results/eval.json"
    """Results JSON path; rollout GIFs go to a `rollouts/` folder beside it."""
    resume: bool = False
    """Keep the finished tasks of an existing results file and run only the others."""
    record: int = 0
    """Save a GIF of each task's first episode, up to this many frames (0: none)."""
    captions: bool = False
    """Also caption the held-out scenes (`vision/scenes`, test split) and score the captions."""
    caption_limit: int = 200
    """Held-out scenes captioned when `captions` is set."""
    device: str = "cpu"
    """Torch device for the model."""
    threads: int = 0
    """Torch CPU threads per process (0: torch's default; workers > 1 use 1 each). One thread is
    often fastest for small models on a busy machine."""
    bootstrap: int = 2000
    """Bootstrap resamples for the 95% confidence intervals of the aggregates."""


# --------------------------------------------------------------------------- statistics


def normalized_score(score: float, random: float, expert: float) -> float | None:
    """100 * (score - random) / (expert - random); None when expert == random.

    >>> normalized_score(75.0, 50.0, 100.0)
    50.0
    """
    if expert is None or random is None or math.isclose(expert, random):
        return None
    return 100.0 * (score - random) / (expert - random)


def iqm(x: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (drops int(n/4) values at each end, as
    `scipy.stats.trim_mean(x, 0.25)` and rliable do).

    >>> iqm(np.arange(1, 9))
    4.5
    """
    x = np.sort(np.asarray(x, np.float64))
    k = int(0.25 * len(x))
    return float(x[k : len(x) - k].mean())


STATISTICS = {"mean": np.mean, "median": np.median, "iqm": iqm}


def bootstrap_ci(
    x: np.ndarray, stat, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `stat(x)`, resampling the values of x (tasks)
    with replacement `n_boot` times with a seeded generator."""
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, len(x), size=(n_boot, len(x)))]  # (n_boot, n)
    values = np.array([stat(s) for s in samples])
    a = (1.0 - level) / 2.0
    return float(np.quantile(values, a)), float(np.quantile(values, 1.0 - a))


def aggregate(scores: list[float], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean, median and IQM of normalised scores with bootstrap 95% CIs, and the number of
    tasks at or above 50% and 80% of expert."""
    x = np.asarray([s for s in scores if s is not None], np.float64)
    out: dict[str, Any] = {"n_tasks": len(x)}
    for name, fn in STATISTICS.items():
        out[name] = float(fn(x)) if len(x) else None
        out[f"{name}_ci"] = list(bootstrap_ci(x, fn, n_boot, seed)) if len(x) else None
    out["tasks_ge_50"] = int(np.sum(x >= 50.0))
    out["tasks_ge_80"] = int(np.sum(x >= 80.0))
    return out


def aggregate_results(tasks: dict[str, dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """{"overall": aggregate, "domains": {domain: aggregate}} over the tasks' normalised scores."""
    by_domain: dict[str, list[float]] = {}
    for r in tasks.values():
        if r.get("normalized_score") is not None:
            by_domain.setdefault(r["domain"], []).append(r["normalized_score"])
    every = [s for v in by_domain.values() for s in v]
    return {
        "overall": aggregate(every, n_boot, seed),
        "domains": {d: aggregate(v, n_boot, seed) for d, v in sorted(by_domain.items())},
    }


# --------------------------------------------------------------------------- batched values


def stack_values(space: spaces.Space, values: list) -> Any:
    """N values of `space` -> one batched value (leading axis N; lists of str for Text)."""
    if isinstance(space, spaces.Dict):
        return {k: stack_values(s, [v[k] for v in values]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(stack_values(s, [v[i] for v in values]) for i, s in enumerate(space.spaces))
    if isinstance(space, spaces.Text):
        return list(values)
    return np.stack([np.asarray(v) for v in values])


def index_value(space: spaces.Space, batched: Any, i: int) -> Any:
    """Entry i of a batched value of `space`."""
    if isinstance(space, spaces.Dict):
        return {k: index_value(s, batched[k], i) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(index_value(s, batched[j], i) for j, s in enumerate(space.spaces))
    if isinstance(space, spaces.Discrete):
        return int(batched[i])
    return batched[i]


# --------------------------------------------------------------------------- agents


class UniformPolicy:
    """Uniformly random actions (the scores table's `random` baseline), GatoPolicy's interface."""

    def __init__(self, action_space: spaces.Space, num_envs: int, seed: int = 0):
        self.action_space, self.num_envs = action_space, num_envs
        self.action_space.seed(seed)

    def reset(self, prompt=None, seed: int | None = None) -> None:
        if seed is not None:
            self.action_space.seed(seed)

    def act(self, observations: Any, active: np.ndarray | None = None) -> Any:
        return stack_values(
            self.action_space, [self.action_space.sample() for _ in range(self.num_envs)]
        )


def trained_tasks(config: dict) -> list[str]:
    """The control tasks of a checkpoint's training config (`train.tasks`, corpora left out)."""
    from opengato.batches.sequences import resolve_sources

    spec = (config.get("train") or {}).get("tasks")
    if not spec:
        return []
    return [s.name for s in resolve_sources(spec) if s.kind == "control"]


def load_prompts(
    task, tokenizer, env, data_dir: str | None, n_tokens: int, where: str = "end"
) -> list:
    """Tokenised successful demonstrations of `task`, each cut to its first (`where="start"`)
    or last (`"end"`) whole timesteps fitting in `n_tokens` (docs/method.md section 5).

    A task without demonstrations under `data_dir` raises DatasetError (no silent fallback to
    prompt-free acting)."""
    from opengato.agent.policy import head_timesteps, tail_timesteps
    from opengato.batches.sequences import first_steps
    from opengato.data.datasets import load_episodes

    episodes = load_episodes(task.name, data_dir)
    good = [e for e in episodes if e.success] or [e for e in episodes if e.success is None]
    if good and all(e.success is None for e in good):  # no success flag: the better half
        median = np.median([e.episode_return for e in good])
        good = [e for e in good if e.episode_return >= median]
    cut = head_timesteps if where == "start" else tail_timesteps
    prompts = []
    for e in good[:MAX_PROMPT_EPISODES]:
        seq = tokenizer.tokenize_episode(
            env.observation_space, env.action_space, first_steps(e.observations, len(e)), e.actions
        )
        prompts.append(cut(seq, n_tokens))
    return prompts


def prompt_length(cfg: EvalConfig, config: dict, context_len: int) -> int:
    """Tokens per prompt: `--prompt-tokens`, else the training run's prompt length (its
    `prompt_len`, default half its context)."""
    if cfg.prompt_tokens is not None:
        return cfg.prompt_tokens
    train = config.get("train") or {}
    return train.get("prompt_len") or train.get("context_len", context_len) // 2


def _finite(value: Any) -> bool:
    """Whether every number in an observation (nested dicts/tuples of arrays) is finite."""
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, tuple | list):
        return all(_finite(v) for v in value)
    if isinstance(value, str):
        return True
    a = np.asarray(value)
    return not np.issubdtype(a.dtype, np.floating) or bool(np.isfinite(a).all())


# --------------------------------------------------------------------------- one task


def _episode_record(seed: int) -> dict:
    return {"seed": seed, "return": 0.0, "length": 0, "success": None, "error": None}


def evaluate_task(task_name: str, cfg: EvalConfig, agent=None, progress=None) -> dict:
    """Run `cfg.episodes` episodes of one task; returns its results (without normalisation).

    `agent` is `(model, tokenizer, config)` from `load_agent` (loaded here when None)."""
    from opengato.agent.policy import GatoPolicy
    from opengato.model.checkpoint import load_agent
    from opengato.tasks import get_task

    task = get_task(task_name)
    model, tokenizer, agent_config = agent or load_agent(cfg.checkpoint, cfg.device, cfg.start_seed)
    t0 = time.time()
    n = max(1, min(cfg.num_envs, cfg.episodes))
    envs = [
        task.make_env(render_mode="rgb_array" if cfg.record and k == 0 else None) for k in range(n)
    ]
    obs_space, act_space = envs[0].observation_space, envs[0].action_space
    prompts: list = []
    if model is None:
        policy = UniformPolicy(act_space, n, cfg.start_seed)
    else:
        if cfg.prompt:
            n_tokens = prompt_length(cfg, agent_config, model.cfg.context_len)
            prompts = load_prompts(
                task, tokenizer, envs[0], cfg.data_dir, n_tokens, cfg.prompt_from
            )
        policy = GatoPolicy(
            model,
            tokenizer,
            obs_space,
            act_space,
            n,
            cfg.sample,
            cfg.temperature,
            seed=cfg.start_seed,
            overflow=cfg.overflow,
            slide_slack=cfg.slide_slack,
        )
    episodes: list[dict] = []
    frames: list[np.ndarray] = []
    steps = 0
    for b0 in range(0, cfg.episodes, n):
        batch = [_episode_record(cfg.start_seed + i) for i in range(b0, min(b0 + n, cfg.episodes))]
        obs: list = [None] * n
        active = np.zeros(n, bool)
        for k, ep in enumerate(batch):
            try:
                obs[k], _ = envs[k].reset(seed=ep["seed"])
                active[k] = True
            except Exception:
                ep["error"] = traceback.format_exc()
        if cfg.record and b0 == 0 and active[0]:
            frames.append(envs[0].render())
        # Each episode's prompt is drawn with its own seed: results do not depend on batching.
        chosen = [
            prompts[np.random.default_rng(ep["seed"]).integers(len(prompts))] if prompts else None
            for ep in batch
        ] + [None] * (n - len(batch))
        policy.reset(chosen if model is not None else None, seed=cfg.start_seed + b0)
        while active.any():
            for k in np.flatnonzero(active):  # a broken env loses its episode, not the task
                if not _finite(obs[k]):
                    batch[k]["error"] = f"non-finite observation at step {batch[k]['length']}"
                    active[k] = False
            if not active.any():
                break
            filler = obs[int(np.argmax(active))]  # rows of finished envs are ignored
            actions = policy.act(
                stack_values(
                    obs_space, [o if a else filler for o, a in zip(obs, active, strict=True)]
                ),
                active,
            )
            for k in np.flatnonzero(active):
                ep = batch[k]
                try:
                    obs[k], reward, terminated, truncated, info = envs[k].step(
                        index_value(act_space, actions, k)
                    )
                except Exception:
                    ep["error"] = traceback.format_exc()
                    active[k] = False
                    continue
                if not math.isfinite(float(reward)):
                    ep["error"] = f"non-finite reward {reward} at step {ep['length']}"
                    active[k] = False
                    continue
                ep["return"] += float(reward)
                ep["length"] += 1
                steps += 1
                if task.success_key is not None:
                    ep["success"] = bool(ep["success"]) or bool(info.get(task.success_key, False))
                if cfg.record and b0 == 0 and k == 0 and len(frames) < cfg.record:
                    frames.append(envs[0].render())
                if terminated or truncated or ep["length"] >= task.max_episode_steps:
                    active[k] = False
            if progress is not None:
                progress(0)
        episodes += batch
        if progress is not None:
            progress(len(batch))
    for env in envs:
        env.close()
    ok = [e for e in episodes if e["error"] is None]
    returns = np.array([e["return"] for e in ok], np.float64)
    result = {
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
        "prompts_available": len(prompts),
        "seconds": time.time() - t0,
        "steps_per_second": steps / max(time.time() - t0, 1e-9),
    }
    if frames:
        result["frames"] = frames  # turned into a GIF file by the caller
    return result


def normalize_task(result: dict, scores: dict[str, dict], task) -> dict:
    """Add `score`, `random`, `expert` and `normalized_score` from the scores table."""
    entry = scores.get(task.name) or {}
    twin = scores.get(task.scores_from) if task.scores_from else None
    if result["metric"] == "success_rate":
        score = result["success_rate"]
        key_e, key_r = "expert_success_rate", "random_success_rate"
    else:
        score = result["mean_return"]
        key_e, key_r = "expert", "random"
    expert = entry.get(key_e)
    random = entry.get(key_r, (twin or {}).get(key_r))
    if random is None and twin is not None:
        random = twin.get(key_r)
    result.update(score=score, expert=expert, random=random)
    result["normalized_score"] = (
        normalized_score(score, random, expert) if None not in (score, random, expert) else None
    )
    return result


# --------------------------------------------------------------------------- the verb


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def task_job(args: tuple[str, EvalConfig]) -> dict:
    import torch

    task_name, cfg = args
    torch.set_num_threads(cfg.threads or 1)
    try:
        return evaluate_task(task_name, cfg)
    except Exception:
        return {"task": task_name, "error": traceback.format_exc()}


def _save_gif(result: dict, out: Path) -> None:
    frames = result.pop("frames", None)
    if not frames:
        return
    import imageio.v2 as imageio

    path = out.parent / "rollouts" / (result["task"].replace("/", "__") + ".gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, [np.asarray(f, np.uint8) for f in frames], duration=0.05, loop=0)
    result["gif"] = str(path.relative_to(out.parent))


RESUME_MAY_CHANGE = ("resume", "workers", "threads", "device", "out", "record")
"""EvalConfig fields that a `--resume` may change; any other change refuses to resume."""
MIN_REFERENCE_EPISODES = 100
"""Fewer reference episodes than this behind a task's expert or random score get a warning."""


def check_out_writable(out: Path) -> None:
    """Fail before any rollout when the results file cannot be written."""
    probe = out.parent / f".{out.name}.probe-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write the results file {out}: {e.strerror or e}") from e


def check_seeds(tasks: list[str], cfg: EvalConfig, data_dirs: list[str | None]) -> list[str]:
    """Refuse evaluation seeds that a task's demonstrations used (in any of `data_dirs`), unless
    `cfg.allow_seen_seeds`. Returns warnings: tasks whose demonstrations were not found, so their
    seeds could not be checked, and every overlap that was allowed."""
    from opengato.data.datasets import read_collection_meta
    from opengato.seeds import SeenSeedsError, overlap

    eval_seeds = range(cfg.start_seed, cfg.start_seed + cfg.episodes)
    warnings, seen = [], []
    for name in tasks:
        metas = [m for d in dict.fromkeys(data_dirs) if (m := read_collection_meta(name, d))]
        if not metas:
            warnings.append(f"{name}: no collection metadata found, so its evaluation seeds "
                            "could not be checked against its demonstrations' seeds")  # fmt: skip
        hits = sorted({s for m in metas for s in overlap(eval_seeds, m)})
        if hits:
            seen.append(f"{name}: {len(hits)} of {cfg.episodes} evaluation seeds "
                        f"({hits[0]}..{hits[-1]}) were used by its demonstrations")  # fmt: skip
    if seen and not cfg.allow_seen_seeds:
        raise SeenSeedsError(
            "evaluation would replay training start states: "
            + "; ".join(seen)
            + f". Use held-out seeds (the default --start-seed {EVAL_SEED_START}), or pass "
            "--allow-seen-seeds to measure recall of seen episodes on purpose"
        )
    return warnings + [f"SEEN SEEDS (allowed): {m}" for m in seen]


def check_prompts(tasks: list[str], cfg: EvalConfig) -> None:
    """Refuse, before any rollout, tasks without demonstrations to prompt with."""
    from opengato.data.datasets import DatasetError, data_root, read_collection_meta

    if not cfg.prompt or cfg.checkpoint == "uniform":
        return
    missing = [t for t in tasks if read_collection_meta(t, cfg.data_dir) is None]
    if missing:
        raise DatasetError(
            f"no demonstrations to prompt with under {data_root(cfg.data_dir)} for: "
            f"{', '.join(missing)}. Pass the --data-dir they were collected in, run "
            f"`opengato collect --tasks {','.join(missing)}`, or evaluate without prompts "
            "(--no-prompt)"
        )


def score_warnings(tasks: list[str], scores: dict[str, dict], data_dir: str | None) -> list[str]:
    """Loud warnings for tasks that cannot be normalised, or whose reference scores rest on
    fewer than MIN_REFERENCE_EPISODES episodes."""
    from opengato.data.datasets import data_root

    if not scores:
        return [f"no scores table at {data_root(data_dir) / 'scores.json'}: no task can be "
                "normalised (run `opengato collect` or pass --data-dir)"]  # fmt: skip
    out = []
    for name in tasks:
        entry = scores.get(name)
        if entry is None:
            out.append(f"{name}: not in the scores table, so it has no normalised score")
            continue
        for side in ("expert", "random"):
            n = entry.get(f"{side}_episodes") or 0
            if n < MIN_REFERENCE_EPISODES:
                out.append(f"{name}: the {side} score rests on {n} episodes "
                           f"(< {MIN_REFERENCE_EPISODES}); collect again with more")  # fmt: skip
    return out


def _resume_results(out: Path, results: dict, cfg: EvalConfig) -> None:
    """Keep the finished tasks of `out` when it was made with the same checkpoint and the same
    evaluation protocol; refuse otherwise, naming what changed."""
    old = json.loads(out.read_text())
    if old.get("checkpoint", {}).get("sha256") != results["checkpoint"]["sha256"]:
        raise ValueError(f"{out} was made with another checkpoint; not resuming")
    was, now = old.get("config", {}), results["config"]
    changed = [f"{k}: {was.get(k)!r} -> {v!r}" for k, v in now.items()
               if k not in RESUME_MAY_CHANGE and k != "tasks" and was.get(k) != v]  # fmt: skip
    if changed:
        raise ValueError(f"{out} was made with another evaluation configuration ("
                         + "; ".join(changed) + "); not resuming (use another --out)")  # fmt: skip
    results["tasks"] = {t: r for t, r in old.get("tasks", {}).items() if "error" not in r}
    results["started"] = old.get("started", results["started"])


def run_eval(cfg: EvalConfig) -> dict:
    """`opengato eval`: evaluate every task, writing `cfg.out` after each; returns the results."""
    from tqdm import tqdm

    from opengato.data.datasets import load_scores
    from opengato.model.checkpoint import checkpoint_hash, load_agent
    from opengato.tasks import DEFAULT_TASKS, get_task, select

    out = Path(cfg.out)
    check_out_writable(out)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    agent = load_agent(cfg.checkpoint, cfg.device, cfg.start_seed)
    tasks = select(cfg.tasks)[0] if cfg.tasks else trained_tasks(agent[2]) or list(DEFAULT_TASKS)
    if not tasks:
        raise ValueError(f"--tasks {','.join(cfg.tasks)!r} names no control task to evaluate")
    train_dir = (agent[2].get("train") or {}).get("data_dir")
    warnings = check_seeds(tasks, cfg, [cfg.data_dir, train_dir])
    check_prompts(tasks, cfg)
    scores = load_scores(cfg.data_dir)
    warnings += score_warnings(tasks, scores, cfg.data_dir)
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    digest = checkpoint_hash(cfg.checkpoint)
    results: dict[str, Any] = {
        "version": RESULTS_VERSION,
        "config": asdict(cfg),
        "checkpoint": {"path": cfg.checkpoint, "sha256": digest, "config": agent[2]},
        "git_commit": git_commit(),
        "seeds": {
            "start_seed": cfg.start_seed,
            "episode_seeds": [cfg.start_seed, cfg.start_seed + cfg.episodes - 1],
            "held_out": not any(w.startswith("SEEN SEEDS") for w in warnings),
        },
        "warnings": warnings,
        "started": _now(),
        "tasks": {},
    }
    if cfg.resume and out.exists():
        _resume_results(out, results, cfg)
    todo = [t for t in tasks if t not in results["tasks"]]

    def finish(result: dict) -> None:
        if "error" not in result:
            _save_gif(result, out)
            normalize_task(result, scores, get_task(result["task"]))
        results["tasks"][result["task"]] = result
        results["aggregates"] = aggregate_results(results["tasks"], cfg.bootstrap, cfg.start_seed)
        results["updated"] = _now()
        atomic_write_json(out, results)

    bar = tqdm(total=len(todo) * cfg.episodes, desc="eval", unit="ep")
    if cfg.workers > 1 and len(todo) > 1:
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(min(cfg.workers, len(todo)), mp_context=ctx) as pool:
            for result in pool.map(task_job, [(t, cfg) for t in todo]):
                finish(result)
                bar.update(cfg.episodes)
    else:
        for t in todo:
            bar.set_postfix_str(t)
            try:
                result = evaluate_task(t, cfg, agent, progress=bar.update)
            except Exception:
                result = {"task": t, "error": traceback.format_exc()}
            finish(result)
    bar.close()
    if cfg.captions and agent[0] is not None:
        from opengato.agent.language import evaluate_captions

        results["captions"] = evaluate_captions(agent[0], agent[1], cfg.data_dir, cfg.caption_limit)
    results["aggregates"] = aggregate_results(results["tasks"], cfg.bootstrap, cfg.start_seed)
    results["finished"] = _now()
    atomic_write_json(out, results)
    print(format_results(results))
    return results


def format_results(results: dict) -> str:
    """A plain-text table of per-task scores and the aggregates."""
    lines = [f"{'task':<40} {'return':>10} {'success':>8} {'norm':>8} {'failed':>7}"]
    for name, r in sorted(results["tasks"].items()):
        if "error" in r:
            lines.append(f"{name:<40} error: {r['error'].strip().splitlines()[-1]}")
            continue
        ret = "-" if r["mean_return"] is None else f"{r['mean_return']:.2f}"
        suc = "-" if r["success_rate"] is None else f"{r['success_rate']:.2f}"
        ns = "-" if r.get("normalized_score") is None else f"{r['normalized_score']:.1f}"
        failed = f"{r.get('n_errors', 0)}/{r.get('n_episodes', 0)}"
        lines.append(f"{name:<40} {ret:>10} {suc:>8} {ns:>8} {failed:>7}")
    agg = results.get("aggregates", {}).get("overall", {})
    if agg.get("n_tasks"):
        lines.append(
            f"overall ({agg['n_tasks']} tasks): mean {agg['mean']:.1f}, median {agg['median']:.1f}, "
            f"IQM {agg['iqm']:.1f} [{agg['iqm_ci'][0]:.1f}, {agg['iqm_ci'][1]:.1f}]; "
            f">=50%: {agg['tasks_ge_50']}, >=80%: {agg['tasks_ge_80']}"
        )
    lines += [f"WARNING: {w}" for w in results.get("warnings", [])]
    return "\n".join(lines)
