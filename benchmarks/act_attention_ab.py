"""A/B of attention variants for acting (gato-79m, packed weights, window full), interleaved
in one process so that a noisy machine slows every variant alike.

    python benchmarks/act_attention_ab.py [rounds] [bf16|fp32] [envs]

Each round times 10 control steps per variant; prints the median and range over rounds.
Variants: `current` (opengato.model.decoding.small_attention: scale and mask inside `baddbmm`,
softmax in the model's dtype, one pass over the scores), `five-pass` (what it replaced on
2026-11-27: the bf16 scores copied to fp32, scaled and masked in place, softmax, copied back),
and `sdpa-prefill` (the 41-token prefill through F.scaled_dot_product_attention).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch.nn.functional as F

import opengato.model.decoding as decoding
from opengato.bench import metaworld_shaped_policy

CURRENT = decoding.small_attention


def five_pass(q, k, v, mask):
    scores = (q @ k.transpose(-2, -1)).float()
    scores.mul_(q.shape[-1] ** -0.5)
    if mask is not None:
        scores.add_(mask)
    return (scores.softmax(-1).to(v.dtype)) @ v


def sdpa_prefill(q, k, v, mask):
    if q.shape[2] > 1:
        bias = None if mask is None else mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return CURRENT(q, k, v, mask)


def interleaved(steps: dict[str, Callable[[], object]], rounds: int, label: str) -> None:
    """Time 10 calls of each variant's control step in turn, `rounds` times (so that a noisy
    machine slows every variant alike); print each variant's median and range."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(10):
                step()
            rates[name].append(10 / (time.perf_counter() - start))
    print(f"{label}, {rounds} rounds of 10 control steps")
    for name, r in rates.items():
        print(f"{name:14s} median {statistics.median(r):.2f} control steps/s "
              f"(range {min(r):.2f}-{max(r):.2f})")  # fmt: skip


def main(rounds: int = 10, dtype: str = "bf16", envs: int = 1) -> None:
    policy, rng = metaworld_shaped_policy("gato-79m", dtype, envs, 1024, weights="packed")
    for _ in range(30):  # 30 x 44 tokens: the window is full and sliding
        policy.act(rng.uniform(-1, 1, (envs, 39)))

    def step_with(attention):
        def step():
            decoding.small_attention = attention
            policy.act(rng.uniform(-1, 1, (envs, 39)))

        return step

    variants = {"current": CURRENT, "five-pass": five_pass, "sdpa-prefill": sdpa_prefill}
    interleaved({name: step_with(fn) for name, fn in variants.items()}, rounds,
                f"gato-79m {dtype}, {envs} envs")  # fmt: skip
    decoding.small_attention = CURRENT


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 10, args[1] if len(args) > 1 else "bf16",
         int(args[2]) if len(args) > 2 else 1)  # fmt: skip
