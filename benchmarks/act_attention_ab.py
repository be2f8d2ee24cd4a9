"""A/B of attention variants for acting (gato-79m, packed weights, window full), interleaved
in one process so that a noisy machine slows every variant alike.

    python benchmarks/act_attention_ab.py [rounds] [bf16|fp32] [envs] [cpu|cuda]

Each round times 10 control steps per variant; prints the median and range over rounds.
Variants: `current` (opengato.model.decoding.small_attention: scale and mask inside `baddbmm`,
softmax in the model's dtype, one pass over the scores), `five-pass` (what it replaced on
2026-11-27: the bf16 scores copied to fp32, scaled and masked in place, softmax, copied back),
and `sdpa-prefill` (the 41-token prefill through F.scaled_dot_product_attention).

On a GPU (plain weights; where batch 512 is bound by the GPU's own work, issue 16):
`current`, `sdpa-decode` (each single-query step through F.scaled_dot_product_attention, a
fused kernel, instead of `baddbmm` -> softmax -> `bmm`), `small-prefill` (the prefill
through `small_attention` too, whatever its size) and `cudnn` (the prefill's masked SDPA may
use cuDNN again: `decoding.CUDNN_ATTENTION`; the window is full, so no step meets a new shape).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import opengato.model.decoding as decoding
from opengato.bench_policy import metaworld_shaped_policy

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


def sdpa_decode(q, k, v, mask):
    if q.shape[2] == 1:
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


def main(rounds: int = 10, dtype: str = "bf16", envs: int = 1, device: str = "cpu") -> None:
    weights = "packed" if device == "cpu" else "plain"  # packing is a CPU path
    policy, rng = metaworld_shaped_policy("gato-79m", dtype, envs, 1024, weights=weights,
                                          device=device)  # fmt: skip
    for _ in range(30):  # 30 x 44 tokens: the window is full and sliding
        policy.act(rng.uniform(-1, 1, (envs, 39)))
    small = decoding.SMALL_ATTN

    def step_with(attention, small_attn=small, cudnn=False):
        def step():
            decoding.small_attention, decoding.SMALL_ATTN = attention, small_attn
            decoding.CUDNN_ATTENTION = cudnn
            policy.act(rng.uniform(-1, 1, (envs, 39)))
            if device != "cpu":
                torch.cuda.synchronize()

        return step

    if device == "cpu":
        variants = {"current": step_with(CURRENT), "five-pass": step_with(five_pass),
                    "sdpa-prefill": step_with(sdpa_prefill)}  # fmt: skip
    else:
        variants = {"current": step_with(CURRENT), "sdpa-decode": step_with(sdpa_decode),
                    "small-prefill": step_with(CURRENT, 1 << 62),
                    "cudnn": step_with(CURRENT, cudnn=True)}  # fmt: skip
    interleaved(variants, rounds, f"gato-79m {dtype}, {envs} envs on {device}")
    decoding.small_attention, decoding.SMALL_ATTN = CURRENT, small
    decoding.CUDNN_ATTENTION = False


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 10, args[1] if len(args) > 1 else "bf16",
         int(args[2]) if len(args) > 2 else 1, args[3] if len(args) > 3 else "cpu")  # fmt: skip
