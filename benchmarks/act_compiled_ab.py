"""A/B of eager (packed weights, the default) against compiled decoding (`--weights compiled`)
for acting: gato-79m, Meta-World-shaped, window full, both policies in one process and timed in
alternation, so that a noisy machine slows both alike.

    python benchmarks/act_compiled_ab.py [rounds] [bf16|fp32] [envs]

Each round times 10 control steps per variant; prints the warm-up time (the compiled policy
compiles its graphs in it), then the median and range over rounds.
"""

from __future__ import annotations

import statistics
import sys
import time

from opengato.bench import metaworld_shaped_policy


def main(rounds: int = 10, dtype: str = "bf16", envs: int = 1) -> None:
    policies = {}
    for weights in ("packed", "compiled"):
        policy, rng = metaworld_shaped_policy("gato-79m", dtype, envs, 1024, weights=weights)
        start = time.perf_counter()
        for _ in range(30):  # 30 x 44 tokens: the window is full and sliding
            policy.act(rng.uniform(-1, 1, (envs, 39)))
        print(f"{weights}: 30 warm-up steps in {time.perf_counter() - start:.1f} s", flush=True)
        policies[weights] = (policy, rng)
    rates: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(rounds):
        for name, (policy, rng) in policies.items():
            start = time.perf_counter()
            for _ in range(10):
                policy.act(rng.uniform(-1, 1, (envs, 39)))
            rates[name].append(10 / (time.perf_counter() - start))
    print(f"gato-79m {dtype}, {envs} envs, {rounds} rounds of 10 control steps")
    for name, r in rates.items():
        print(f"{name:9s} median {statistics.median(r):.2f} control steps/s "
              f"(range {min(r):.2f}-{max(r):.2f})")  # fmt: skip


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 10, args[1] if len(args) > 1 else "bf16",
         int(args[2]) if len(args) > 2 else 1)  # fmt: skip
