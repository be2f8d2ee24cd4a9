"""What an Atari expert would cost on this CPU: PPO-CNN training speed on ALE Pong with
rl-baselines3-zoo's Atari PPO settings (8 envs, 128 steps, 4 epochs, batch 256, 4 stacked
84x84 frames). Needs `pip install ale-py==0.12.1 opencv-python-headless` (not opengato's
dependencies). Usage: python benchmarks/experts/atari_cost.py [STEPS]; log: atari_cost.log."""

import sys
import time

import ale_py
import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

gym.register_envs(ale_py)
torch.set_num_threads(1)
env = VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=8, seed=0), n_stack=4)
model = PPO(
    "CnnPolicy", env, n_steps=128, n_epochs=4, batch_size=256, learning_rate=2.5e-4,
    clip_range=0.1, ent_coef=0.01, vf_coef=0.5, seed=0, device="cpu",
)  # fmt: skip
model.learn(1024)  # warm-up
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
start = time.perf_counter()
model.learn(steps, reset_num_timesteps=False)
dt = time.perf_counter() - start
print(
    f"PPO CnnPolicy PongNoFrameskip-v4, 8 envs, 1 torch thread: {steps} steps in {dt:.1f} s "
    f"= {steps / dt:.0f} steps/s; 10M steps = {1e7 / (steps / dt) / 3600:.1f} h"
)
