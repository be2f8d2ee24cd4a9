"""A/B of attention variants for batch-1 acting (gato-79m, bf16, packed weights, window full),
interleaved in one process so that a noisy machine slows every variant alike.

    python benchmarks/act_attention_ab.py [rounds]

Each round times 10 control steps per variant; prints the median and range over rounds.
Variants: `current` (opengato.model.gato._small_attention), `out-of-place` (the same with a new
tensor for the scaled and for the masked scores, as before 2026-11-27), `bf16mask` (the additive mask
added to the bf16 scores before the fp32 softmax: the same floats, half the bytes), and
`sdpa-prefill` (the 41-token prefill through F.scaled_dot_product_attention).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch.nn.functional as F

import opengato.model.gato as gato
from opengato.bench import metaworld_shaped_policy

CURRENT = gato._small_attention


def out_of_place(q, k, v, mask):
    scores = (q @ k.transpose(-2, -1)).float() * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores + mask
    return (scores.softmax(-1).to(v.dtype)) @ v


def bf16mask(q, k, v, mask):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:  # exact in the scores' dtype: adds 0 or -inf
        scores = scores + mask
    return (scores.float() * (q.shape[-1] ** -0.5)).softmax(-1).to(v.dtype) @ v


def sdpa_prefill(q, k, v, mask):
    if q.shape[2] > 1:
        bias = None if mask is None else mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return CURRENT(q, k, v, mask)


def main(rounds: int = 10) -> None:
    policy, rng = metaworld_shaped_policy("gato-79m", "bf16", 1, 1024, weights="packed")
    for _ in range(30):  # 30 x 44 tokens: the window is full and sliding
        policy.act(rng.uniform(-1, 1, (1, 39)))
    variants = {"current": CURRENT, "out-of-place": out_of_place, "bf16mask": bf16mask,
                "sdpa-prefill": sdpa_prefill}  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            gato._small_attention = fn
            start = time.perf_counter()
            for _ in range(10):
                policy.act(rng.uniform(-1, 1, (1, 39)))
            rates[name].append(10 / (time.perf_counter() - start))
    gato._small_attention = CURRENT
    for name, r in rates.items():
        print(f"{name:14s} median {statistics.median(r):.1f} control steps/s "
              f"(range {min(r):.1f}-{max(r):.1f})")  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
