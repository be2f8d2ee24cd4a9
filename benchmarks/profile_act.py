"""Where gato-79m's acting time goes at batch 1 (torch.profiler), for the next optimisation.

python benchmarks/profile_act.py [fp32|bf16]
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from opengato.bench import metaworld_shaped_policy


def main(dtype: str = "bf16", steps: int = 10) -> None:
    policy, rng = metaworld_shaped_policy("gato-79m", dtype, batch=1, context_len=1024)
    policy.act(rng.uniform(-1, 1, (1, 39)))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            policy.act(rng.uniform(-1, 1, (1, 39)))
        dt = time.perf_counter() - t0
    print(f"gato-79m {dtype}, batch 1, window full: {steps / dt:.1f} control steps/s "
          f"(under the profiler), torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40
        )
    )


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["bf16"]))
