"""Opt-in int8 weights for acting on a CPU: fewer bytes per weight, so a batch-1 decode step,
which reads every weight once, runs faster. Not in the paper and not the default: the accuracy
cost is measured in benchmarks/RESULTS.md ("int8 acting") and every result made with it says so.

Each transformer block's four matrices (qkv, attention output, FFN up and down) get int8 weights
with one scale per output channel, and their inputs are quantised on the fly, each token by its
own range (PyTorch's dynamic quantisation on the fbgemm backend: int8 x int8 -> int32 GEMMs, VNNI
where the CPU has it). Embeddings, the tied output layer (acting reads only the action rows of
it), norms, the image patch network, attention and the KV cache stay in fp32. Written with
PyTorch's own `quantize_dynamic` rather than by hand: it is the well-kept path to fbgemm's
kernels.

Per token, not per tensor: fbgemm picks one input scale for the whole input of a matmul, every
row and token of the forward, so an env's int8 result would depend on which other envs, pads and
tokens shared its forward (`--num-envs`, ragged or mixed lanes, envs finishing). `_PerToken`
maps each token's values affinely onto exactly [-1, 1] before the int8 matmul and undoes it
after (W x = s W x' + m W 1, with x = m + s x'): every token then spans the same range, fbgemm's
one scale is the same whatever shares the forward, and a token is quantised by its own range.
"""

from __future__ import annotations

import copy
import warnings

import torch

from opengato.model.gato import Gato
from opengato.model.packed import block_linears


def quantize_int8(model: Gato) -> Gato:
    """A copy of `model` (float32, eval mode, CPU) whose block matmuls use int8 weights per output
    channel; the original is untouched. Inference only: the copy cannot be trained or saved as a
    checkpoint. Raises ValueError off the CPU or where no int8 backend exists."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 acting runs on the CPU only (PyTorch's fbgemm/x86 kernels)")
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "fbgemm") if e in engines), None)
    if engine is None:
        raise ValueError(f"no int8 backend in this PyTorch build (engines: {engines})")
    torch.backends.quantized.engine = engine
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    fp32 = copy.deepcopy(model).float().eval()
    names = block_linears(fp32)
    spec = {name: per_channel_dynamic_qconfig for name in names}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        out = quantize_dynamic(fp32, qconfig_spec=spec, dtype=torch.qint8)
        for name in names:
            parent, _, child = name.rpartition(".")
            holder = out.get_submodule(parent)
            setattr(holder, child, _PerToken(getattr(holder, child)))
    out.int8 = True
    return out


class _PerToken(torch.nn.Module):
    """A dynamic int8 linear (`quantize_dynamic`'s) whose input is quantised token by token (the
    module docstring): each token's values are mapped onto exactly [-1, 1] (its minimum to -1,
    its maximum to 1, a constant token to 0), multiplied, and mapped back."""

    def __init__(self, qlinear: torch.nn.Module):
        super().__init__()
        self.qlinear = qlinear
        weight = qlinear.weight().dequantize()  # (out, in): the int8 weights the GEMM uses
        bias = qlinear.bias()
        self.register_buffer("row_sums", weight.sum(1))  # W 1
        self.register_buffer("bias", torch.zeros(len(weight)) if bias is None else bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo = x.amin(-1, keepdim=True)
        span = x.amax(-1, keepdim=True) - lo
        flat = span == 0
        span = torch.where(flat, torch.ones_like(span), span)
        # Divided before scaling, so that a token's extremes land on -1 and 1 exactly.
        unit = torch.where(flat, torch.zeros_like(x), (x - lo) / span * 2 - 1)
        half = span * 0.5
        y = (self.qlinear(unit) - self.bias) * half  # s W x'
        return y + (lo + half) * self.row_sums + self.bias  # + m W 1 + b
