"""Where a training step's time goes (torch.profiler), for issue 13's MFU targets: the steps of
`opengato bench --what train` (its mixture, `step_data`, `train_step`, AdamW), eager, profiled
after a warm-up, with each op's time summed into a few kinds (matmul, attention, patch
convolutions, norms and elementwise, optimizer, copies) so that the table says what to fuse.

    python benchmarks/profile_train.py [preset] [batch] [cpu|cuda] [steps] [context] [dropout]

On a GPU the kinds sum the device's kernel time (self CUDA time); on a CPU, self CPU time. A dry
run on the CPU: `python benchmarks/profile_train.py gato-tiny 2 cpu 2`.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from opengato.bench import BenchConfig, _mixture
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.training.config import TrainConfig
from opengato.training.distributed import Processes, default_generator
from opengato.training.train import step_data, train_step

KINDS = [  # (kind, substrings of an op's or kernel's name), the first that matches
    ("loss (output layer)", ("log_softmax", "cross_entropy", "nll_loss")),
    ("attention", ("attention", "flash", "fmha", "sdpa", "softmax")),
    ("patch conv", ("conv", "fprop", "dgrad", "wgrad", "implicit", "group_norm", "groupnorm")),
    ("matmul", ("mm", "gemm", "matmul", "linear", "nvjet", "cutlass", "xmma", "cublas")),
    ("optimizer", ("adam", "foreach", "multi_tensor", "clip", "norm_")),
    ("norm/elementwise", ("layer_norm", "layernorm", "gelu", "elementwise", "add", "mul",
                          "dropout", "bernoulli", "vectorized", "reduce")),
    ("copy/index", ("copy", "index", "gather", "scatter", "cat", "memcpy", "memset", "fill")),
]  # fmt: skip


def kind_of(name: str) -> str:
    low = name.lower()
    return next((k for k, keys in KINDS if any(s in low for s in keys)), "other")


def main(
    preset: str, batch: int, device: str, steps: int, context: int = 0, dropout: float | None = None
) -> None:
    cuda = device.startswith("cuda")
    cfg = BenchConfig(
        device=device, batch_size=batch, context_len=context or (1024 if cuda else 256)
    )
    torch.manual_seed(0)
    tok, mix = _mixture(cfg, cfg.context_len)
    extra = {} if dropout is None else {"dropout": dropout}  # None: the preset's
    model = Gato(make_config(preset, tok.vocab_size, context_len=cfg.context_len, **extra))
    model = model.to(device)
    model.train()
    opt = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95))
    train_cfg = TrainConfig(dtype="bf16", grad_clip=1.0, seed=0)
    procs = Processes(world=1, rank=0, device=torch.device(device), own_group=False)
    data = step_data(train_cfg, mix, model, procs, batch)
    gen = default_generator(torch.device(device))
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step(i: int) -> None:
        seed, host, _ = data(i)
        train_step(model, model, opt, host.to(device), gen, seed, train_cfg)
        opt.step()

    for i in range(3):  # warm-up: allocator, cuBLAS/cuDNN autotuning
        step(i)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(3, 3 + steps):
            step(i)
        sync()
        dt = time.perf_counter() - t0
    tokens = steps * batch * cfg.context_len
    print(f"{preset} bf16 on {device}, {batch} x {cfg.context_len}, {steps} steps profiled: "
          f"{dt / steps * 1000:.1f} ms a step, {tokens / dt:,.0f} token slots/s (under the "
          f"profiler), torch {torch.__version__}")  # fmt: skip
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    by_kind: dict[str, float] = defaultdict(float)
    for e in events:
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us and (not cuda or e.device_type.name == "CUDA" or "kernel" in e.key.lower()):
            by_kind[kind_of(e.key)] += us
    if cuda and not by_kind:  # older profilers: the CUDA time is on the ops
        for e in events:
            by_kind[kind_of(e.key)] += e.self_device_time_total
    total = sum(by_kind.values()) or 1.0
    print("\n| kind | ms a step | share |\n| --- | ---: | ---: |")
    for k, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {us / steps / 1000:.2f} | {us / total:.1%} |")
    print(f"| all ({'GPU kernels' if cuda else 'CPU ops'}) | {total / steps / 1000:.2f} | |\n")
    print(events.table(sort_by=key, row_limit=30, max_name_column_width=60))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a else "gato-79m", int(a[1]) if len(a) > 1 else 32,
         a[2] if len(a) > 2 else "cuda", int(a[3]) if len(a) > 3 else 5,
         int(a[4]) if len(a) > 4 else 0, float(a[5]) if len(a) > 5 else None)  # fmt: skip
