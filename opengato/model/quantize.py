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
divides each token by its largest magnitude before the int8 matmul and multiplies the output
back (W x = s W (x / s)), and adds one anchor row holding -1 and 1: every input then spans
exactly [-1, 1], fbgemm's one scale is the same whatever shares the forward, and each token is
quantised symmetrically by its own range.
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
    biases = {}
    for name in names:  # the bias is added after the per-token scale (`_PerToken`)
        linear = fp32.get_submodule(name)
        biases[name], linear.bias = linear.bias, None
    spec = {name: per_channel_dynamic_qconfig for name in names}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        out = quantize_dynamic(fp32, qconfig_spec=spec, dtype=torch.qint8)
    for name in names:
        parent, _, child = name.rpartition(".")
        holder = out.get_submodule(parent)
        setattr(holder, child, _PerToken(getattr(holder, child), biases[name]))
    out.int8 = True
    return out


_TINY = torch.finfo(torch.float32).tiny  # int8 acting runs in float32


class _PerToken(torch.nn.Module):
    """A bias-free dynamic int8 linear (`quantize_dynamic`'s) whose input is quantised token by
    token (the module docstring), then its bias."""

    def __init__(self, qlinear: torch.nn.Module, bias: torch.Tensor | None):
        super().__init__()
        self.qlinear = qlinear
        anchor = torch.zeros(1, qlinear.in_features)
        anchor[0, 0], anchor[0, -1] = -1.0, 1.0  # pins fbgemm's input range to [-1, 1]
        self.register_buffer("anchor", anchor)
        out = qlinear.out_features
        self.register_buffer("bias", torch.zeros(out) if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        scale = torch.linalg.vector_norm(flat, float("inf"), -1, keepdim=True)  # max |x|
        scale.clamp_min_(_TINY)  # an all-zero token stays zero
        y = self.qlinear(torch.cat([flat / scale, self.anchor]))[:-1]  # W (x / s), anchor out
        return torch.addcmul(self.bias, y, scale).reshape(*x.shape[:-1], -1)
