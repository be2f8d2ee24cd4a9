"""The two kernels of decoding (acting and generation over a KV cache), as eager and compiled
decoding (model/compiled.py) run them: attention of a few new queries over the cache, and the
matmul of a single token. `Gato`'s blocks call them; their measurements are in
benchmarks/RESULTS.md ("Acting on a CPU").
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# Acting on a CPU: a few new queries over a KV cache (batch 1: the observation's prefill and each
# action token). There SDPA's CPU flash kernel costs ~1 ms a call, mostly fixed overhead, while
# plain q @ k^T -> softmax -> @ v on these small matrices is cheaper (benchmarks/RESULTS.md). Above
# this many q-elements x keys (e.g. 16 envs' prefill) the fused kernel wins and is used.
SMALL_ATTN = 1 << 26


CUDNN_ATTENTION = False
"""Whether a decoding forward with a mask may run SDPA through cuDNN on a GPU. On an H100, SDPA
with a mask chose cuDNN (benchmarks/RESULTS.md, "On one H100"), and cuDNN builds a graph for each
new shape of its inputs, reported at hundreds of ms each, while a KV cache that is not yet full
(or a ragged lane's, until its longest row's window is) gives attention a new length at nearly
every forward. Off, such forwards use flash, memory-efficient or math attention, which need no
per-shape build. benchmarks/act_attention_ab.py's `cudnn` variant times cuDNN again on a GPU."""

_NOT_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_backends(x: Tensor, cache, mask: Tensor | None) -> contextlib.AbstractContextManager:
    """The context a forward's blocks run in: SDPA without cuDNN for decoding with a mask (a
    `cache` and a `mask`) on a GPU (see CUDNN_ATTENTION), else no change."""
    if cache is None or mask is None or not x.is_cuda or CUDNN_ATTENTION:
        return contextlib.nullcontext()
    return sdpa_kernel(_NOT_CUDNN)


def small_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(D) + mask) v, unfused but in one pass over the scores: the scale
    and the additive mask (0 / -inf) are applied inside the bmm (`baddbmm`, which rounds once
    to the model's dtype), and the softmax reads and writes that dtype (computing in fp32).
    Acting's 41-token prefill spent more on its (24, 41, 1,024) scores than on the bmms when they
    went through fp32 in five passes; this is ~5% more control steps/s (benchmarks/RESULTS.md).
    The same result as SDPA up to rounding: in bf16 a score rounds after scaling, not before
    (max difference 2 bf16 ulps on the output, greedy actions unchanged: tests/test_golden.py)."""
    B, H, T, D = q.shape
    if torch.compiler.is_compiling():
        # Compiled (model/compiled.py): Inductor fuses the scale, the mask and the softmax into
        # one loop; a single query's products too, written as products and sums (an extern bmm
        # of one row read the keys at a fifth of the memory bandwidth).
        scores = (q * k).sum(-1).unsqueeze(2) if T == 1 else q @ k.transpose(2, 3)
        scores = scores * D**-0.5 if mask is None else scores * D**-0.5 + mask
        p = scores.float().softmax(-1).to(q.dtype)  # (B, H, T, L)
        return (p.transpose(2, 3) * v).sum(2, keepdim=True) if T == 1 else p @ v
    L = k.shape[2]
    kt = k.reshape(B * H, L, D).transpose(1, 2)  # views of the cache: no copy
    per_row = mask is not None and mask.dim() == 4  # a ragged cache's (B, 1, T, L)
    bias = q.new_zeros(()) if mask is None or per_row else mask.to(q.dtype)
    scores = torch.baddbmm(bias, q.reshape(B * H, T, D), kt, beta=float(bias.dim() > 0),
                           alpha=D**-0.5)  # fmt: skip
    if per_row:
        scores = (scores.view(B, H, T, L) + mask.to(q.dtype)).view(B * H, T, L)
    return torch.bmm(scores.softmax(-1), v.reshape(B * H, L, D)).view(B, H, T, D)


def dense(linear: nn.Linear, x: Tensor) -> Tensor:
    """`linear(x)`. Compiled for a single token (model/compiled.py): products and a sum, which
    Inductor makes one loop that streams the weights at the memory's pace; oneDNN's product of
    one row with a packed matrix ran at two thirds of it (benchmarks/RESULTS.md)."""
    if torch.compiler.is_compiling() and x.numel() == linear.in_features:
        y = (x.reshape(1, -1) * linear.weight).sum(-1)  # (out,): Inductor sums in fp32
        if linear.bias is not None:
            y = y + linear.bias
        return y.view(*x.shape[:-1], -1)
    return linear(x)
