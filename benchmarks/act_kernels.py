"""What bounds a batch-1 decode step on this CPU: memory bandwidth, the weight GEMV of each
dtype, and the 41-token prefill GEMM, for gato-79m's weight shapes (measured, not assumed).

python benchmarks/act_kernels.py            # median of repeated runs, one line per case
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

# gato-79m's weight matrices (out, in) per block: qkv, proj, FFN up, FFN down (GELU FFN).
SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]
N_LAYER = 8


def _median_s(fn, repeats: int = 7, inner: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def bandwidth_gbs() -> float:
    """Read bandwidth: summing a 512 MB fp32 tensor (far larger than any cache)."""
    x = torch.ones(128 * 2**20)
    return x.numel() * 4 / _median_s(lambda: x.sum(), repeats=5, inner=2) / 1e9


def weights_pass_ms(dtype: torch.dtype, tokens: int) -> float:
    """One forward's worth of weight matmuls (8 blocks x 4 matrices) on `tokens` rows."""
    ws = [torch.randn(o, i).to(dtype) for _ in range(N_LAYER) for o, i in SHAPES]
    xs = {i: torch.randn(1, tokens, i).to(dtype) for _, i in SHAPES}  # (B, T, C), as the model

    def run():
        for w in ws:
            F.linear(xs[w.shape[1]], w)

    return _median_s(run) * 1e3


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"read bandwidth: {bandwidth_gbs():.1f} GB/s")
    n_params = N_LAYER * sum(o * i for o, i in SHAPES)
    for dtype in (torch.bfloat16, torch.float32):
        for tokens in (1, 41):
            ms = weights_pass_ms(dtype, tokens)
            size = n_params * dtype.itemsize
            flops = 2 * tokens * n_params
            print(f"{str(dtype):15s} {tokens:3d} token(s): {ms:6.2f} ms a pass "
                  f"({size / ms / 1e6:5.1f} GB/s of weights, {flops / ms / 1e6:6.1f} GFLOP/s)")  # fmt: skip


if __name__ == "__main__":
    main()
