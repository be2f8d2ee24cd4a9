"""The policy's own per-step cost at many envs: gato-tiny (so that the model's share is small)
acting for B Meta-World-shaped envs with a full window, fp32, plain weights, on the CPU.

    python benchmarks/act_overhead.py 512 [--profile] [--stand-in]

Prints the median of 30 steps (after one); `--profile` adds cProfile's top functions over 4
more steps (their call count is what the stacked lanes of tokens/stack.py cut). `--stand-in`
replaces the model's forwards by eval_host.py's random logits, which advance the KV cache as a
forward would (its mask is device work on a GPU, left out), and splits a step's wall time into
the stand-in's and the rest: the host's work around the forwards (sampling, a kernel and a
copy on a GPU, counts as the rest).
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import time

from opengato.bench_policy import metaworld_shaped_policy

STAND_IN = {"forwards": 0, "s": 0.0}


def stand_in_logits(self, batch, cache=None, vocab=None):
    """`eval_host.fake_next_logits` (random logits, the cache advanced as by a forward), its
    calls and wall time counted."""
    from eval_host import fake_next_logits  # benchmarks/, beside this script

    start = time.perf_counter()
    logits = fake_next_logits(self, batch, cache, vocab)
    STAND_IN["forwards"] += 1
    STAND_IN["s"] += time.perf_counter() - start
    return logits


def main(envs: int, profile: bool, stand_in: bool = False) -> None:
    if stand_in:
        from opengato.model.gato import Gato

        Gato.next_logits = stand_in_logits
    policy, rng = metaworld_shaped_policy("gato-tiny", "fp32", envs, 1024, weights="plain")
    obs = rng.uniform(-1, 1, (36, envs, 39))
    policy.act(obs[0])
    times, STAND_IN["forwards"], STAND_IN["s"] = [], 0, 0.0
    for i in range(1, 31):
        t = time.perf_counter()
        policy.act(obs[i])
        times.append(time.perf_counter() - t)
    print(f"gato-tiny, {envs} envs: median {statistics.median(times) * 1000:.1f} ms a step")
    if stand_in:
        n, ms = STAND_IN["forwards"] / 30, STAND_IN["s"] / 30 * 1e3
        print(f"  a step: {sum(times) / 30 * 1e3:.2f} ms on average, {ms:.2f} ms of it in {n:.1f}"
              f" stand-in forwards, the rest {sum(times) / 30 * 1e3 - ms:.2f} ms")  # fmt: skip
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for i in range(31, 35):
            policy.act(obs[i])
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    envs = next((int(a) for a in sys.argv[1:] if a.isdigit()), 512)
    main(envs, "--profile" in sys.argv, "--stand-in" in sys.argv)
