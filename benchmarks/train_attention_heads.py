"""Training attention on a CPU by head width: SDPA's fused kernel (the one `Gato` trains with)
forward and backward at the demo's shape, the same width split into 4, 2 or 1 heads, and the
demo's 4 heads with each head's width zero-padded (the same attention: padded dimensions add
nothing to the scores, the scale stays that of the real width, the padded outputs are dropped).
The demo's gato-1m has 4 heads of 24, and its attention is over half of a CPU training step
(benchmarks/profile_train.py), so this says what fewer, wider heads, or wider tiles, would save.

    python benchmarks/train_attention_heads.py [batch] [context] [width] [rounds]

Defaults: the demo's 16 x 512, width 96, 6 rounds (the first dropped); bf16, causal.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F


def time_heads(
    batch: int, context: int, heads: int, width: int, rounds: int, pad_to: int = 0
) -> tuple[float, float]:
    """Median forward and backward ms of causal SDPA over (batch, heads, context, width/heads),
    each head's width zero-padded to `pad_to` inside the timed region when that is wider."""
    torch.manual_seed(0)
    dim = width // heads
    shape = (batch, heads, context, dim)
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, dtype=torch.bfloat16)
    fwd, bwd = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        if pad_to > dim:
            qp, kp, vp = (F.pad(x, (0, pad_to - dim)) for x in (q, k, v))
            y = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=dim**-0.5)
            y = y[..., :dim]
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        t1 = time.perf_counter()
        y.backward(grad)
        t2 = time.perf_counter()
        q.grad = k.grad = v.grad = None
        if r:  # the first allocates
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return statistics.median(fwd) * 1e3, statistics.median(bwd) * 1e3


def main(batch: int = 16, context: int = 512, width: int = 96, rounds: int = 6) -> None:
    print(f"causal SDPA, bf16, {batch} x {context}, width {width}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {rounds - 1} rounds\n")  # fmt: skip
    print("| heads x width | forward ms | backward ms | total ms |\n| --- | ---: | ---: | ---: |")
    for heads in (4, 2, 1):
        f, b = time_heads(batch, context, heads, width, rounds)
        print(f"| {heads} x {width // heads} | {f:.1f} | {b:.1f} | {f + b:.1f} |")
    dim = width // 4
    for pad_to in (32, 64):
        if pad_to > dim:
            f, b = time_heads(batch, context, 4, width, rounds, pad_to)
            print(f"| 4 x {dim} padded to {pad_to} | {f:.1f} | {b:.1f} | {f + b:.1f} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
