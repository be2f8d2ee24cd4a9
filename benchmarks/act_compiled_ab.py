"""A/B of eager (packed weights, the default) against compiled decoding (`--weights compiled`)
for acting: gato-79m, Meta-World-shaped, window full, both policies in one process and timed in
alternation, so that a noisy machine slows both alike.

    python benchmarks/act_compiled_ab.py [rounds] [bf16|fp32] [envs]

Each round times 10 control steps per variant; prints the warm-up time (the compiled policy
compiles its graphs in it), then the median and range over rounds.
"""

from __future__ import annotations

import sys
import time

from act_attention_ab import interleaved

from opengato.bench_policy import metaworld_shaped_policy


def main(rounds: int = 10, dtype: str = "bf16", envs: int = 1) -> None:
    policies = {}
    for weights in ("packed", "compiled"):
        policy, rng = metaworld_shaped_policy("gato-79m", dtype, envs, 1024, weights=weights)
        start = time.perf_counter()
        for _ in range(30):  # 30 x 44 tokens: the window is full and sliding
            policy.act(rng.uniform(-1, 1, (envs, 39)))
        print(f"{weights}: 30 warm-up steps in {time.perf_counter() - start:.1f} s", flush=True)
        policies[weights] = (policy, rng)
    steps = {name: (lambda p=p, r=r: p.act(r.uniform(-1, 1, (envs, 39))))
             for name, (p, r) in policies.items()}  # fmt: skip
    interleaved(steps, rounds, f"gato-79m {dtype}, {envs} envs")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 10, args[1] if len(args) > 1 else "bf16",
         int(args[2]) if len(args) > 2 else 1)  # fmt: skip
