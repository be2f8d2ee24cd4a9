"""Opt-in int8 weights for acting on a CPU: fewer bytes per weight, so a batch-1 decode step,
which reads every weight once, runs faster. Not in the paper and not the default: the accuracy
cost is measured in benchmarks/RESULTS.md ("int8 acting") and every result made with it says so.

Each transformer block's four matrices (qkv, attention output, FFN up and down) get int8 weights
with one scale per output channel, and their inputs are quantised on the fly per batch (PyTorch's
dynamic quantisation on the fbgemm backend: int8 x int8 -> int32 GEMMs, VNNI where the CPU has
it). Embeddings, the tied output layer (acting reads only the action rows of it), norms, the
image patch network, attention and the KV cache stay in floating point (fp32 by default). Written with PyTorch's own
`quantize_dynamic` rather than by hand: it is the well-kept path to fbgemm's kernels.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from opengato.model.gato import Gato


def block_linears(model: Gato) -> list[str]:
    """Qualified names of the Linear layers inside the transformer blocks."""
    return [
        name
        for name, m in model.named_modules()
        if name.startswith("blocks.") and isinstance(m, nn.Linear)
    ]


class Int8Linear(nn.Module):
    """A dynamically quantised linear layer inside a model whose other parts run in bf16 or
    fp32: its input goes to fp32 (what the int8 kernel takes) and its output back."""

    def __init__(self, quantized: nn.Module):
        super().__init__()
        self.quantized = quantized
        self.in_features, self.out_features = quantized.in_features, quantized.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized(x.float()).to(x.dtype)


def quantize_int8(model: Gato, dtype: torch.dtype = torch.float32) -> Gato:
    """A copy of `model` (eval mode, CPU) whose block matmuls use int8 weights per output channel;
    everything else (embeddings, norms, attention and its KV cache, the output layer) runs in
    `dtype` (fp32 by default; bf16 halves the KV cache's bytes but measured no faster). The original
    is untouched. Inference only: the copy cannot be trained or saved as a checkpoint. Raises
    ValueError off the CPU or where no int8 backend exists."""
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
        setattr(holder, child, Int8Linear(getattr(holder, child)))
    for m in out.modules():  # the float parts (the int8 kernels keep their own weights)
        if not isinstance(m, Int8Linear):
            for p in m.parameters(recurse=False):
                p.data = p.data.to(dtype)
    out.int8 = True
    return out
