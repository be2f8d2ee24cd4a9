"""Tokenizer throughput: tokens per second for whole episodes (not a timed test).

python benchmarks/tokenizer_bench.py
"""

from __future__ import annotations

import platform
import time

import numpy as np
from gymnasium import spaces

from opengato.files import git_commit
from opengato.tokens.tokenizer import Tokenizer


def bench(name: str, fn, repeats: int = 20) -> tuple[str, int, float]:
    n = len(fn())  # warm-up, and the token count
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    dt = (time.perf_counter() - t0) / repeats
    return name, n, n / dt


def main() -> None:
    tok = Tokenizer()
    rng = np.random.default_rng(0)
    mw_obs, mw_act = (
        spaces.Box(-np.inf, np.inf, (39,), np.float64),
        spaces.Box(-1, 1, (4,), np.float32),
    )
    T = 500
    o, a = rng.normal(size=(T, 39)), rng.uniform(-1, 1, (T, 4)).astype(np.float32)
    mission = spaces.Text(200, charset="abcdefghijklmnopqrstuvwxyz ")
    ba_obs = spaces.Dict(
        {
            "direction": spaces.Discrete(4),
            "grid": spaces.Box(0, 10, (7, 7, 3), np.int64),
            "mission": mission,
        }
    )
    Tb = 100
    bo = {
        "direction": rng.integers(0, 4, Tb),
        "grid": rng.integers(0, 11, (Tb, 7, 7, 3)),
        "mission": ["pick up the purple key"] * Tb,
    }
    ba = rng.integers(0, 7, Tb)
    px_obs = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (64, 64, 3), np.uint8),
            "proprio": spaces.Box(-np.inf, np.inf, (4,)),
        }
    )
    po = {
        "image": rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8),
        "proprio": rng.normal(size=(T, 4)),
    }
    rows = [
        bench(
            "Meta-World state, 500 steps (39+1+4 tokens/step)",
            lambda: tok.tokenize_episode(mw_obs, mw_act, o, a),
        ),
        bench(
            "BabyAI, 100 steps (mission + 148 + 1 + 1 tokens/step)",
            lambda: tok.tokenize_episode(ba_obs, spaces.Discrete(7), bo, ba),
        ),
        bench(
            "Meta-World pixels 64x64, 500 steps (16 patches+4+1+4)",
            lambda: tok.tokenize_episode(px_obs, mw_act, po, a),
            5,
        ),
    ]
    commit = git_commit(short=True)
    print(f"commit {commit or '-'}, {platform.processor() or platform.machine()}, 1 process\n")
    print("| episode | tokens | tokens/s |\n| --- | ---: | ---: |")
    for name, n, rate in rows:
        print(f"| {name} | {n:,} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
