"""Processes and devices for training: the ranks of a `torchrun` launch (DistributedDataParallel,
or FSDP with `--shard fsdp`: training/sharding.py), this process's device and torch generator, the
compute dtype, and peak memory.

    torchrun --nproc_per_node=2 -m opengato.cli train ...   # one process per rank
"""

from __future__ import annotations

import os
import resource
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from opengato.model.inputs import GatoBatch
from opengato.training.sharding import shard_model


@dataclass
class Processes:
    """This process's place in the launch: `world` processes, this one `rank`, on `device`."""

    world: int
    rank: int
    device: torch.device
    own_group: bool
    """Whether `start_processes` started the process group (then `end_processes` ends it)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that tokenises, logs, validates and writes checkpoints."""
        return self.rank == 0


def start_processes(device: str) -> Processes:
    """Read the launch from torchrun's environment (one process when there is none), pick the
    device (`auto`: this rank's GPU when there are GPUs, else the CPU) and join the group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    procs = Processes(world, rank, torch.device(device), world > 1 and not dist.is_initialized())
    if procs.own_group:
        if procs.device.type == "cuda":
            torch.cuda.set_device(procs.device)
        dist.init_process_group("nccl" if procs.device.type == "cuda" else "gloo")
    return procs


def local_batch_size(batch_size: int, procs: Processes) -> int:
    """Each process's share of `batch_size` sequences; refuses one that does not divide."""
    if batch_size % procs.world:
        raise ValueError(f"batch_size {batch_size} is not divisible by {procs.world} processes")
    return batch_size // procs.world


def barrier(procs: Processes) -> None:
    """Wait for every process (nothing to wait for alone)."""
    if procs.world > 1:
        dist.barrier()


def end_processes(procs: Processes) -> None:
    """Wait for every process, then leave the group if `start_processes` started it."""
    barrier(procs)
    if procs.own_group:
        dist.destroy_process_group()


def mean_over_processes(value: float, procs: Processes) -> float:
    """The mean of `value` over all processes."""
    if procs.world == 1:
        return value
    t = torch.tensor([value], device=procs.device)
    dist.all_reduce(t)
    return float(t) / procs.world


def global_mean_factor(batch: GatoBatch, world: int) -> torch.Tensor:
    """What to multiply this process's loss by so that the gradient DDP and FSDP average over the
    processes is the gradient of the mean over every target of the step, as one process with the
    whole batch computes it (the paper's sum over the batch). Each process's loss is a mean over
    its own targets, and processes hold different numbers of them (a text window has ~500, a
    BabyAI window ~3): an unscaled average of the processes' means weighs a target by how many
    others share its process, so the datasets' shares of the loss moved with the process count.
    `world` x this process's target weight / all processes' (one all-reduce of a scalar on the
    device: nothing waits for the host)."""
    mine = (batch.target_weight.float() * batch.target_mask()).sum()  # what the loss counts
    total = mine.clone()
    dist.all_reduce(total)
    return mine * world / total.clamp_min(torch.finfo(torch.float32).tiny)


def wrap_model(
    model: nn.Module, procs: Processes, compile: bool, shard: str = "none", scope: str = "blocks"
) -> nn.Module:
    """What the loop calls: `model` in DistributedDataParallel when there are several processes,
    or sharded over them in place with `shard="fsdp"` (training/sharding.py: build the optimizer
    after this); compiled with `compile` (`compile_model`, over `scope`). Checkpoints save
    `model` itself (sharded: gathered)."""
    if shard == "fsdp":
        if procs.world == 1:
            raise ValueError(
                "--shard fsdp shards the model over the processes of a torchrun launch, and this "
                "is one process: launch it with torchrun --nproc_per_node=N (N >= 2)"
            )
        model = shard_model(model)
    elif procs.world > 1:
        # The patch embedding has no gradient in batches without images.
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[procs.device.index] if procs.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    return compile_model(model, scope) if compile else model


def compile_model(runner: nn.Module, scope: str = "blocks") -> nn.Module:
    """`runner` (a Gato, or one in DDP) under torch.compile, the eager module as its `_orig_mod`.
    `scope="model"`: the whole forward and loss as one graph (`torch.compile(runner)`), whose
    compile time grows with the depth. `scope="blocks"`: each transformer block compiled
    (`BlocksCompiled`)."""
    if scope == "model":
        return torch.compile(runner)
    if scope == "blocks":
        return BlocksCompiled(runner)
    raise ValueError(f"unknown compile scope {scope!r}; choose blocks or model")


class BlocksCompiled(nn.Module):
    """`runner` whose transformer blocks run compiled while it runs through this module
    (PyTorch's "regional compilation"). The blocks share one graph, their weights being its
    inputs, so it compiles once whatever the depth (benchmarks/RESULTS.md, "Compiling the
    blocks"), with fixed shapes (batch x context x width); the parts whose sizes change from
    batch to batch (image patches, the targets the loss reads) run eagerly. Called any other way
    (the validation, a checkpoint, decoding) the same model runs eager: the compiled forwards are
    set on the blocks only for the duration of a call (`nn.Module.compile` keeps its compiled
    forward in `_compiled_call_impl`, which `Module.__call__` uses when set)."""

    def __init__(self, runner: nn.Module):
        from opengato.model.gato import Block

        super().__init__()
        self._orig_mod = runner  # as torch.compile's wrapper names it: the eager way back
        self._blocks = [m for m in runner.modules() if isinstance(m, Block)]  # not registered
        if not self._blocks:
            raise ValueError(f"compile scope blocks: {type(runner).__name__} has no Block")
        self._compiled = [torch.compile(b._call_impl) for b in self._blocks]

    def forward(self, *args, **kwargs):
        for block, compiled in zip(self._blocks, self._compiled, strict=True):
            block._compiled_call_impl = compiled
        try:
            return self._orig_mod(*args, **kwargs)
        finally:
            for block in self._blocks:
                block._compiled_call_impl = None


def default_generator(device: torch.device) -> torch.Generator:
    """The default torch generator of `device`: the one dropout draws from (PyTorch's dropout
    takes no generator), so seeding it per step and handing it to the model for the patch
    positions makes every random draw of a training step a function of that seed."""
    if device.type == "cuda":
        torch.cuda.init()  # the device generators exist once CUDA is initialised
        index = torch.cuda.current_device() if device.index is None else device.index
        return torch.cuda.default_generators[index]
    return torch.default_generator


def autocast(device: torch.device, dtype: str) -> AbstractContextManager:
    """bf16 autocast on `device` when `dtype` is "bf16" (weights stay fp32), else nothing."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory, and the peak CUDA allocation on a GPU."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
