"""Opt-in int8 weights for acting on a CPU: fewer bytes per weight, so a batch-1 decode step,
which reads every weight once, runs faster. Not in the paper and not the default: the accuracy
cost is measured in benchmarks/RESULTS.md ("int8 acting") and every result made with it says so.

Each transformer block's four matrices (qkv, attention output, FFN up and down) get int8 weights
with one scale per output channel, and their inputs are quantised on the fly per batch (PyTorch's
dynamic quantisation on the fbgemm backend: int8 x int8 -> int32 GEMMs, VNNI where the CPU has
it). Embeddings, the tied output layer (acting reads only the action rows of it), norms, the
image patch network, attention and the KV cache stay in fp32. Written with PyTorch's own
`quantize_dynamic` rather than by hand: it is the well-kept path to fbgemm's kernels.
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
    spec = {name: per_channel_dynamic_qconfig for name in block_linears(fp32)}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        out = quantize_dynamic(fp32, qconfig_spec=spec, dtype=torch.qint8)
    out.int8 = True
    return out
