"""Weights packed once for the CPU's matmul library, for acting and generation on a CPU.

A plain `F.linear` on the CPU hands oneDNN (bf16) or MKL (fp32) the weight in PyTorch's layout
at every call, and the library re-lays it out each time. At batch 1 a decode step is nothing but
matrix-vector products, so that per-call work, not the weights' bytes, set the speed: gato-79m's
32 block matmuls took 8.4 ms a pass in bf16 where reading the weights at this machine's memory
bandwidth takes ~3.5 ms (benchmarks/act_kernels.py). Packing each weight once into oneDNN's
blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, then `_linear_pointwise`: the same
two ops `torch.compile` emits for a frozen CPU linear, used here without compiling the step)
measured 3.8 ms, and a 41-token prefill 13.0 ms instead of 19.3; fp32 halves both.

Numerics: the same GEMM library, so results agree with `F.linear` to rounding (bit-identical in
the bf16 cases measured; `tests/test_model.py` bounds the difference). Inference only: the packed
copy shares every parameter with the model (no extra memory but the packed weights) and is
rebuilt when the model's weights change in place (an optimiser step bumps their versions).
"""

from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opengato.model.gato import Gato


class PackedLinear(nn.Module):
    """An `nn.Linear` for CPU inference whose weight is also held packed for oneDNN."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # shared, for the fallback
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != self.weight.dtype or torch.is_grad_enabled() or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)  # autocast, training: the plain path
        bias = None if self.bias is None else self.bias.detach()
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, self.in_features), self.packed, bias, "none", [-1], ""
        )
        return y.view(*x.shape[:-1], self.out_features)


def can_pack(model: nn.Module) -> bool:
    """Whether packing applies: a model on the CPU, in bf16 or fp32, with oneDNN available."""
    p = next(model.parameters())
    return (
        p.device.type == "cpu"
        and p.dtype in (torch.bfloat16, torch.float32)
        and torch.backends.mkldnn.is_available()
    )


def block_linears(model: Gato) -> list[str]:
    """Qualified names of the Linear layers inside the transformer blocks (the matmuls that
    packing and int8 replace)."""
    return [
        name
        for name, m in model.named_modules()
        if name.startswith("blocks.") and isinstance(m, nn.Linear)
    ]


def packed_copy(model: Gato) -> Gato:
    """A copy of `model` for CPU inference whose transformer-block matmuls run on packed weights;
    every parameter and buffer is shared with `model`, which is not modified."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    out = copy.deepcopy(model, memo=shared)
    for name in block_linears(out):
        parent, _, child = name.rpartition(".")
        holder = out.get_submodule(parent)
        setattr(holder, child, PackedLinear(getattr(holder, child)))
    return out.eval()


_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_version(model: nn.Module) -> tuple:
    """Changes whenever a weight changes in place (an optimiser step bumps its version) or the
    model's dtype changes: a derived copy of the weights made at another version is stale."""
    return tuple(p._version for p in model.parameters()) + (next(model.parameters()).dtype,)


def for_cpu_inference(model: Gato) -> Gato:
    """`model` with packed weights when that applies (see `can_pack`), else `model` itself. The
    packed copy is kept per model and rebuilt when any weight changed since it was made."""
    if not isinstance(model, Gato) or getattr(model, "int8", False) or not can_pack(model):
        return model
    version = weights_version(model)
    hit = _cache.get(model)
    if hit is not None and hit[0] == version:
        return hit[1]
    try:
        packed = packed_copy(model)
    except RuntimeError:  # a oneDNN build without the reorder op for this dtype: plain weights
        return model
    _cache[model] = (version, packed)
    return packed
