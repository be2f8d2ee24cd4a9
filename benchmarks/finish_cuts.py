"""Envs that finish at scattered steps: what cutting a lane's KV cache costs. gato-1m (random
weights, packed fp32) acts for N Meta-World-shaped envs with a full window; env i's episode ends
at a random step in [1, steps) (seed 0); prints the total seconds and the part in
`KVCache.select` (the copy of every kept row that cut a lane before `KVCache.keep`).

    python benchmarks/finish_cuts.py [envs] [preset] [steps]

On the 2-core CPU: `python benchmarks/finish_cuts.py 640 gato-1m 100` (benchmarks/RESULTS.md,
"Finished envs leave their lane in place").
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from opengato.bench_policy import metaworld_shaped_policy
from opengato.model.kv_cache import KVCache


def main(envs: int, preset: str, steps: int) -> None:
    torch.set_num_threads(2)
    policy, rng = metaworld_shaped_policy(preset, "fp32", envs, 1024, weights="packed")
    ends = np.random.default_rng(0).integers(1, steps, envs)
    spent, select = [0.0], KVCache.select

    def timed(self, rows):
        t = time.perf_counter()
        out = select(self, rows)
        spent[0] += time.perf_counter() - t
        return out

    KVCache.select = timed
    t0 = time.perf_counter()
    for t in range(steps):
        policy.act(rng.uniform(-1, 1, (envs, 39)), ends > t)
    total = time.perf_counter() - t0
    print(f"{preset}, {envs} envs, {steps} steps, episodes ending at scattered steps: "
          f"{total:.1f} s in all, {spent[0]:.1f} s in KVCache.select")  # fmt: skip


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]) if a else 640, a[1] if len(a) > 1 else "gato-1m",
         int(a[2]) if len(a) > 2 else 100)  # fmt: skip
