"""Where gato-79m's acting time goes (torch.profiler), for the next optimisation.

python benchmarks/profile_act.py [fp32|bf16] [cpu|cuda] [envs]
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from opengato.bench_policy import metaworld_shaped_policy


def main(dtype: str = "bf16", device: str = "cpu", envs: int = 1, steps: int = 10) -> None:
    cuda = device.startswith("cuda")
    weights = "plain" if cuda else "packed"  # packing is a CPU path
    policy, rng = metaworld_shaped_policy(
        "gato-79m", dtype, envs, 1024, weights=weights, device=device
    )
    policy.act(rng.uniform(-1, 1, (envs, 39)))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            policy.act(rng.uniform(-1, 1, (envs, 39)))
        dt = time.perf_counter() - t0
    print(f"gato-79m {dtype} on {device}, {envs} envs, window full: {steps / dt:.1f} control "
          f"steps/s (under the profiler), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    for key in ["self_cpu_time_total"] + (["self_cuda_time_total"] if cuda else []):
        print(prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=50))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        args[0] if args else "bf16",
        args[1] if len(args) > 1 else "cpu",
        int(args[2]) if len(args) > 2 else 1,
    )
