"""`opengato train-expert`: retrain a shipped MuJoCo expert from scratch with stable-baselines3.

SAC trains on this machine's CPU (seeded, with a progress bar); its deterministic actor is
exported to a safetensors `MLPActor` (opengato/experts/actor.py), which is then scored over
`eval_episodes` held-out seeds through the numpy actor (what users run), beside a random
policy on the same seeds. The row of docs/experts.md is written as JSON next to the weights.
stable-baselines3 is the optional extra `experts` (`pip install -e '.[experts]'`); running a
shipped expert needs none of it.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

from opengato.experts.actor import ActorSpec, MLPActor, load_actor, save_actor
from opengato.experts.mujoco import MUJOCO_ENVS, WEIGHTS_DIR, make_mujoco, weights_path
from opengato.files import atomic_write_json, git_commit

# Steps per env: budgets that fit this CPU (docs/experts.md). The other hyperparameters are
# stable-baselines3's SAC defaults (net_arch [256, 256], lr 3e-4, batch 256, buffer 1M,
# gamma 0.99, tau 0.005, one gradient step per env step, automatic entropy), which are also
# rl-baselines3-zoo's for the MuJoCo envs, save `learning_starts` (TrainExpertConfig).
DEFAULT_STEPS = {
    "InvertedPendulum-v5": 20_000,
    "InvertedDoublePendulum-v5": 50_000,
    "Reacher-v5": 100_000,
}


@dataclass
class TrainExpertConfig:
    """Retrain the expert of a MuJoCo task and export it as a small safetensors actor."""

    task: Annotated[str, tyro.conf.Positional]
    """The task, `mujoco/InvertedPendulum-v5` (or just the env id)."""
    algo: Literal["sac"] = "sac"
    """The training algorithm (stable-baselines3's)."""
    steps: int | None = None
    """Environment steps to train for (default: the env's budget in DEFAULT_STEPS, else 1M)."""
    seed: int = 0
    """Seeds torch, numpy, the env and its action space."""
    out_dir: Path = WEIGHTS_DIR
    """Where `<EnvId>.safetensors` and `<EnvId>.json` are written (default: the package's own
    weights, which the `mujoco` suite ships)."""
    eval_episodes: int = 100
    """Episodes scoring the exported actor and a random policy (0: skip)."""
    eval_seed: int = 1_000_000
    """Evaluation episode i uses seed eval_seed + i (held out from training's seeds)."""
    threads: int = 1
    """torch CPU threads (1: reproducible, and fair to a shared machine)."""
    learning_starts: int = 1_000
    """Random-action steps before SAC's first update (rl-baselines3-zoo's MuJoCo setting is
    10k, scaled down here for the small envs' small budgets)."""


def run_train_expert(cfg: TrainExpertConfig) -> dict:
    """Train, export, score; returns (and prints) the JSON row written beside the weights."""
    env_id = cfg.task.removeprefix("mujoco/")
    if env_id not in MUJOCO_ENVS:
        raise ValueError(f"unknown MuJoCo env {env_id!r}; one of {', '.join(MUJOCO_ENVS)}")
    steps = cfg.steps or DEFAULT_STEPS.get(env_id, 1_000_000)
    model, wall = _train_sac(env_id, steps, cfg)
    path = weights_path(env_id, cfg.out_dir)
    spec = export_sac(model, path, f"mujoco/{env_id}", steps, cfg.seed)
    env = make_mujoco(env_id)
    actor = load_actor(path, env)
    _check_parity(model, actor, env, cfg.seed)
    row = {
        "task": spec.task, "algo": cfg.algo, "steps": steps, "seed": cfg.seed,
        "train_wall_s": round(wall, 1), "train_steps_per_s": round(steps / wall, 1),
        "machine": f"{platform.machine()} CPU, {cfg.threads} torch thread(s)",
        "commit": git_commit(short=True), "weights": path.name,
        "eval_episodes": cfg.eval_episodes, "eval_seed": cfg.eval_seed,
    }  # fmt: skip
    if cfg.eval_episodes:
        expert = evaluate(env_id, lambda obs, rng: actor(obs), cfg.eval_episodes, cfg.eval_seed)
        randoms = evaluate(env_id, _random_policy(env), cfg.eval_episodes, cfg.eval_seed)
        row.update(_stats("expert", expert) | _stats("random", randoms))
    atomic_write_json(path.with_suffix(".json"), row)
    print(json.dumps(row, indent=2))
    return row


def _train_sac(env_id: str, steps: int, cfg: TrainExpertConfig) -> tuple[object, float]:
    """A trained SB3 SAC model and its training wall time in seconds."""
    torch, sb3 = _import_sb3()
    torch.set_num_threads(cfg.threads)
    env = make_mujoco(env_id)
    model = sb3.SAC(
        "MlpPolicy",
        env,
        learning_starts=min(cfg.learning_starts, steps // 2),
        seed=cfg.seed,
        device="cpu",
        verbose=0,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=steps, callback=_progress_callback(steps, env_id))
    return model, time.perf_counter() - start


def _import_sb3():
    try:
        import stable_baselines3 as sb3
        import torch
    except ImportError as e:
        raise ImportError(
            f"training an expert needs stable-baselines3 ({e}): pip install -e '.[experts]'"
        ) from e
    return torch, sb3


def _progress_callback(steps: int, env_id: str):
    """An SB3 callback that drives a tqdm bar showing the mean of the last 100 episodes."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=steps, desc=f"SAC {env_id}", unit="step", mininterval=5)

        def _on_step(self) -> bool:
            self.bar.update(self.training_env.num_envs)
            episodes = self.model.ep_info_buffer
            if episodes and self.n_calls % 1000 == 0:
                self.bar.set_postfix(ep_return=f"{np.mean([e['r'] for e in episodes]):.1f}")
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    return Progress()


def export_sac(model, path: Path, task: str, steps: int, seed: int) -> ActorSpec:
    """Write the deterministic actor of an SB3 SAC model (its Gaussian mean through tanh,
    scaled to the action bounds) as an `MLPActor` file; returns its spec."""
    import torch

    actor = model.policy.actor
    linears = [m for m in actor.latent_pi if isinstance(m, torch.nn.Linear)] + [actor.mu]
    weights = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in linears]
    space = model.action_space
    spec = ActorSpec(
        task=task,
        sizes=[linears[0].in_features] + [m.out_features for m in linears],
        activation="relu",
        squash="tanh",
        action_low=space.low.astype(float).tolist(),
        action_high=space.high.astype(float).tolist(),
        algo="sac",
        steps=steps,
        seed=seed,
    )
    save_actor(path, spec, weights)
    return spec


def _check_parity(model, actor: MLPActor, env, seed: int, n: int = 20) -> None:
    """The exported numpy actor must act as SB3's deterministic policy does."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, *env.observation_space.shape)).astype(np.float32)
    ours = np.stack([actor(o) for o in obs])
    theirs, _ = model.predict(obs, deterministic=True)
    if not np.allclose(ours, theirs, atol=1e-4):
        raise RuntimeError(f"exported actor differs from SB3's: max {np.abs(ours - theirs).max()}")


Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def evaluate(env_id: str, policy: Policy, episodes: int, start_seed: int) -> list[float]:
    """Returns of `episodes` episodes; episode i is reset with seed start_seed + i."""
    env = make_mujoco(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=start_seed + i)
        rng = np.random.default_rng(start_seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs, rng))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def _random_policy(env) -> Policy:
    space = env.action_space
    return lambda obs, rng: rng.uniform(space.low, space.high).astype(np.float32)


def _stats(name: str, returns: list[float]) -> dict:
    return {f"{name}_mean": round(float(np.mean(returns)), 2),
            f"{name}_std": round(float(np.std(returns)), 2)}  # fmt: skip
