"""The policy's own per-step cost at many envs: gato-tiny (so that the model's share is small)
acting for B Meta-World-shaped envs with a full window, fp32, plain weights, on the CPU.

    python benchmarks/act_overhead.py 512 [--profile]

Prints the median of 30 steps (after one); `--profile` adds cProfile's top functions over 4
more steps (their call count is what the stacked lanes of tokens/stack.py cut).
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import time

from opengato.bench_policy import metaworld_shaped_policy


def main(envs: int, profile: bool) -> None:
    policy, rng = metaworld_shaped_policy("gato-tiny", "fp32", envs, 1024, weights="plain")
    obs = rng.uniform(-1, 1, (36, envs, 39))
    policy.act(obs[0])
    times = []
    for i in range(1, 31):
        t = time.perf_counter()
        policy.act(obs[i])
        times.append(time.perf_counter() - t)
    print(f"gato-tiny, {envs} envs: median {statistics.median(times) * 1000:.1f} ms a step")
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for i in range(31, 35):
            policy.act(obs[i])
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 512, "--profile" in sys.argv)
