"""`opengato train-expert`: retrain a shipped expert from scratch with stable-baselines3.

MuJoCo and DM Control experts train with SAC, MinAtar's with PPO, on this machine's CPU
(seeded, with a progress bar). The deterministic actor is exported to a safetensors
`MLPActor` (opengato/experts/actor.py), checked against SB3's own prediction, then scored over
`eval_episodes` held-out seeds through the suite's expert class (what users run), beside a
random policy on the same seeds. The row of docs/experts.md is written as JSON next to the
weights. stable-baselines3 is the optional extra `experts` (`pip install -e '.[experts]'`);
running a shipped expert needs none of it.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import gymnasium as gym
import numpy as np
import tyro

from opengato.experts import dmc, minatar, mujoco
from opengato.experts.actor import ActorSpec, MLPActor, load_actor, save_actor
from opengato.files import atomic_write_json, git_commit


@dataclass(frozen=True)
class ExpertSuite:
    """How one suite's experts are trained, stored and run."""

    envs: tuple[str, ...]
    """The env names the suite offers (`Hopper-v5`, `Breakout`, `cartpole-swingup`)."""
    make_env: Callable[[str], gym.Env]
    """The env the task acts in (its observation is what the expert class reads)."""
    features: Callable[[gym.Env], Callable[[Any], np.ndarray]]
    """env -> obs -> the flat float32 vector the MLP reads (the suite module's `features`, which
    its expert class runs too)."""
    expert: Callable[..., Any]
    """`expert(env, path)`: the suite's expert class."""
    weights_path: Callable[[str, Path], Path]
    algo: str
    """`sac` (continuous actions) or `ppo` (discrete)."""
    default_steps: dict[str, int]
    """Steps per env that fit this CPU (docs/experts.md); others default to 1M."""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per env, keyword arguments of the SB3 algorithm that differ from the suite's settings
    (rl-baselines3-zoo's per-env entries, e.g. Swimmer's gamma)."""


SUITES: dict[str, ExpertSuite] = {
    "mujoco": ExpertSuite(
        mujoco.MUJOCO_ENVS, mujoco.make_mujoco, mujoco.features, mujoco.MujocoExpert, mujoco.weights_path, "sac",
        {"InvertedPendulum-v5": 20_000, "InvertedDoublePendulum-v5": 50_000,
         "Reacher-v5": 100_000, "Swimmer-v5": 100_000, "Hopper-v5": 100_000,
         "HalfCheetah-v5": 100_000, "Walker2d-v5": 80_000, "Ant-v5": 250_000},
        # rl-baselines3-zoo's SAC Swimmer: with gamma 0.99 SAC stalls near 40 (345 with 0.9999)
        overrides={"Swimmer-v5": {"gamma": 0.9999}},
    ),
    "dmc": ExpertSuite(
        dmc.DMC_TASKS, dmc.make_dmc, dmc.features, dmc.DmcExpert, dmc.weights_path, "sac",
        {"cartpole-balance": 50_000, "point_mass-easy": 50_000, "cartpole-swingup": 50_000,
         "reacher-easy": 50_000, "ball_in_cup-catch": 50_000, "finger-spin": 50_000,
         "walker-walk": 60_000, "cheetah-run": 60_000},
    ),
    "minatar": ExpertSuite(
        tuple(minatar.MINATAR_GAMES), minatar.make_minatar, minatar.features,
        minatar.MinAtarExpert, minatar.weights_path, "ppo",
        {game: 2_000_000 for game in minatar.MINATAR_GAMES},
    ),
}  # fmt: skip


@dataclass
class TrainExpertConfig:
    """Retrain the expert of a MuJoCo, DM Control or MinAtar task and export it as a small
    safetensors actor."""

    task: Annotated[str, tyro.conf.Positional]
    """The task: `mujoco/Hopper-v5`, `dmc/cartpole-swingup` or `minatar/Breakout` (a bare
    MuJoCo env id works too)."""
    steps: int | None = None
    """Environment steps to train for (default: the task's budget in its suite's
    `default_steps`, else 1M)."""
    seed: int = 0
    """Seeds torch, numpy, the env and its action space."""
    out_dir: Path = mujoco.WEIGHTS_DIR
    """Where the weights and their JSON row are written (default: the package's own
    weights, which the suites ship)."""
    eval_episodes: int = 100
    """Episodes scoring the exported actor and a random policy (0: skip)."""
    eval_seed: int = 1_000_000
    """Evaluation episode i uses seed eval_seed + i (held out from training's seeds)."""
    threads: int = 1
    """torch CPU threads (1: reproducible, and fair to a shared machine)."""
    learning_starts: int = 1_000
    """SAC: random-action steps before the first update (rl-baselines3-zoo's MuJoCo setting
    is 10k, scaled down here for the small envs' small budgets)."""
    n_envs: int = 8
    """PPO: environments stepped together (in this process)."""


def parse_task(task: str) -> tuple[str, str]:
    """(suite, env name) of `minatar/Breakout`; a bare name of MUJOCO_ENVS is MuJoCo's."""
    suite, _, name = task.rpartition("/")
    suite = suite or "mujoco"
    if suite not in SUITES:
        raise ValueError(f"no expert suite {suite!r} (task {task!r}); one of {', '.join(SUITES)}")
    if name not in SUITES[suite].envs:
        raise ValueError(f"unknown {suite} env {name!r}; one of {', '.join(SUITES[suite].envs)}")
    return suite, name


def run_train_expert(cfg: TrainExpertConfig) -> dict:
    """Train, export, score; returns (and prints) the JSON row written beside the weights."""
    suite_name, name = parse_task(cfg.task)
    suite = SUITES[suite_name]
    steps = cfg.steps or suite.default_steps.get(name, 1_000_000)
    env = suite.make_env(name)

    def make_train_env() -> gym.Env:
        task_env = suite.make_env(name)
        return _FeatureEnv(task_env, suite.features(task_env))

    train = _train_ppo if suite.algo == "ppo" else _train_sac
    overrides = suite.overrides.get(name, {})
    model, wall = train(make_train_env, steps, cfg, f"{suite_name}/{name}", **overrides)
    path = suite.weights_path(name, cfg.out_dir)
    export = export_ppo if suite.algo == "ppo" else export_sac
    export(model, path, f"{suite_name}/{name}", steps, cfg.seed)
    _check_parity(model, load_actor(path), cfg.seed)
    expert = suite.expert(env, path)
    row = {
        "task": f"{suite_name}/{name}", "algo": suite.algo, "steps": steps, "seed": cfg.seed,
        "train_wall_s": round(wall, 1), "train_steps_per_s": round(steps / wall, 1),
        "machine": f"{platform.machine()} CPU, {cfg.threads} torch thread(s)",
        "commit": git_commit(short=True), "weights": path.name,
        "eval_episodes": cfg.eval_episodes, "eval_seed": cfg.eval_seed,
        **({"overrides": overrides} if overrides else {}),
    }  # fmt: skip
    if cfg.eval_episodes:
        make = partial(suite.make_env, name)
        ours = evaluate(make, lambda obs, rng: expert.act(obs), cfg.eval_episodes, cfg.eval_seed)
        randoms = evaluate(make, _random_policy(env), cfg.eval_episodes, cfg.eval_seed)
        row.update(_stats("expert", ours) | _stats("random", randoms))
    atomic_write_json(path.with_suffix(".json"), row)
    print(json.dumps(row, indent=2))
    return row


class _FeatureEnv(gym.ObservationWrapper):
    """What SB3 trains in: the task's env with the expert's flat float32 features."""

    def __init__(self, env: gym.Env, features: Callable[[Any], np.ndarray]):
        super().__init__(env)
        self.features = features
        dim = features(env.observation_space.sample()).shape[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    def observation(self, obs):
        return self.features(obs)


def _train_sac(
    make_env: Callable[[], gym.Env], steps: int, cfg: TrainExpertConfig, task: str, **overrides
):
    """A trained SB3 SAC model (stable-baselines3's defaults, which are rl-baselines3-zoo's
    for MuJoCo: net_arch [256, 256], lr 3e-4, batch 256, buffer 1M, gamma 0.99, tau 0.005,
    one gradient step per env step, automatic entropy; `learning_starts` scaled down; then the
    env's `overrides`) and its training wall time in seconds."""
    torch, sb3 = _import_sb3()
    torch.set_num_threads(cfg.threads)
    learning_starts = min(cfg.learning_starts, steps // 2)
    model = sb3.SAC(
        "MlpPolicy",
        make_env(),
        learning_starts=learning_starts,
        seed=cfg.seed,
        device="cpu",
        **overrides,
    )
    _quiet_logger(model)
    start = time.perf_counter()
    model.learn(total_timesteps=steps, callback=_progress_callback(steps, f"SAC {task}"))
    return model, time.perf_counter() - start


def _train_ppo(
    make_env: Callable[[], gym.Env], steps: int, cfg: TrainExpertConfig, task: str, **overrides
):
    """A trained SB3 PPO model and its training wall time in seconds.

    Hyperparameters: rl-baselines3-zoo's Atari PPO (n_steps 128, batch 256, 4 epochs,
    lr 2.5e-4 annealed to 0, clip 0.1, entropy 0.01, gamma 0.99, GAE 0.95) with an MLP
    [256, 256] (ReLU) on MinAtar's unpacked channels in place of the Atari CNN."""
    torch, sb3 = _import_sb3()
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(cfg.threads)
    vec = make_vec_env(make_env, n_envs=cfg.n_envs, seed=cfg.seed)
    model = sb3.PPO(
        "MlpPolicy", vec, n_steps=128, batch_size=256, n_epochs=4,
        learning_rate=lambda progress: 2.5e-4 * progress, clip_range=0.1, ent_coef=0.01,
        policy_kwargs={"net_arch": [256, 256], "activation_fn": torch.nn.ReLU},
        seed=cfg.seed, device="cpu", **overrides,
    )  # fmt: skip
    _quiet_logger(model)
    start = time.perf_counter()
    model.learn(total_timesteps=steps, callback=_progress_callback(steps, f"PPO {task}"))
    return model, time.perf_counter() - start


def _quiet_logger(model) -> None:
    """Give `model` a logger that writes nothing: without one, every `learn` makes an empty
    folder `SB3-<time>` in the system's temp dir (SB3's `configure`) and leaves it there."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))


def _import_sb3():
    try:
        import stable_baselines3 as sb3
        import torch
    except ImportError as e:
        raise ImportError(
            f"training an expert needs stable-baselines3 ({e}): pip install -e '.[experts]'"
        ) from e
    return torch, sb3


def _progress_callback(steps: int, desc: str):
    """An SB3 callback that drives a tqdm bar showing the mean of the last 100 episodes."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=steps, desc=desc, unit="step", mininterval=5)

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


def export_ppo(model, path: Path, task: str, steps: int, seed: int) -> ActorSpec:
    """Write the deterministic actor of an SB3 PPO model with a `Discrete` action (its
    policy MLP and action head; the action is the largest logit) as an `MLPActor` file."""
    import torch

    policy = model.policy
    linears = [m for m in policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    linears.append(policy.action_net)
    activation = {torch.nn.ReLU: "relu", torch.nn.Tanh: "tanh"}[policy.activation_fn]
    spec = ActorSpec(
        task=task,
        sizes=[linears[0].in_features] + [m.out_features for m in linears],
        activation=activation,
        squash="argmax",
        algo="ppo",
        steps=steps,
        seed=seed,
    )
    save_actor(path, spec, [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in linears])
    return spec


def _check_parity(model, actor: MLPActor, seed: int, n: int = 20) -> None:
    """The exported numpy actor must act as SB3's deterministic policy does."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, actor.spec.sizes[0])).astype(np.float32)
    ours = np.stack([actor(o) for o in obs])
    theirs, _ = model.predict(obs, deterministic=True)
    if not np.allclose(ours, theirs, atol=1e-4):
        raise RuntimeError(f"exported actor differs from SB3's: {ours} vs {theirs}")


Policy = Callable[[Any, np.random.Generator], Any]


def evaluate(
    make_env: Callable[[], gym.Env], policy: Policy, episodes: int, start_seed: int
) -> list[float]:
    """Returns of `episodes` episodes; episode i is reset with seed start_seed + i."""
    env = make_env()
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


def _random_policy(env: gym.Env) -> Policy:
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        return lambda obs, rng: int(rng.integers(space.n))
    return lambda obs, rng: rng.uniform(space.low, space.high).astype(np.float32)


def _stats(name: str, returns: list[float]) -> dict:
    return {f"{name}_mean": round(float(np.mean(returns)), 2),
            f"{name}_std": round(float(np.std(returns)), 2)}  # fmt: skip
