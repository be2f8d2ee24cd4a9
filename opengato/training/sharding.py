"""Fully sharded data parallel training (`opengato train --shard fsdp`): each of the N processes of
a `torchrun` launch holds 1/N of every parameter, gradient and AdamW moment, where
DistributedDataParallel (the default with several processes) holds all of them in every one.

    torchrun --nproc_per_node=8 -m opengato.cli train --preset gato-1.18b --shard fsdp --dtype bf16

The engine is PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters become DTensors
sharded along their first dimension; each transformer block is gathered just before its forward
(and again for its backward) and freed after, and its gradients are reduce-scattered, averaged
over the processes like DDP's. It runs on CPUs too, on the gloo backend (tests/test_sharding.py).

Precision. The parameters, gradients, their reduction and AdamW stay fp32; `--dtype bf16` runs
the forward under the same autocast as every other run (FSDP's MixedPrecisionPolicy is not used).
Why: with the policy, the gathered parameters are bf16, so the embedding output and with it the
residual stream would be bf16 where autocast keeps them fp32, and a sharded run would no longer
compute what a DDP or one-GPU run of the same options computes. What the policy would save (an
estimate, not a measurement): half the all-gather traffic, and the bf16 copy of the weights that
autocast keeps from forward to backward (2.4 GB for gato-1.18b), which under FSDP is not sharded.

Memory of gato-1.18b (1.224B parameters at the default vocabulary of 5,123), by arithmetic, not
measured: fp32 parameters, gradients and AdamW's two moments are 16 bytes a parameter, 19.6 GB.
Activations kept for backward at bf16 autocast (SDPA's flash kernel, no activation checkpointing)
are about 44 bytes per token and width unit per layer: 44 x 2048 x 24 layers = 2.2 MB a token,
71 GB for a batch of 32 x 1024. On one 80 GB GPU that batch does not fit (19.6 + 2.4 bf16 weights
+ 71 + ~2 logits = ~95 GB, before the allocator's overhead), and bf16 weights and moments (8 bytes
a parameter) would take only 9.8 GB off it: it would need activation checkpointing or fewer
sequences a step. Over N GPUs each process holds 32/N sequences: at N = 2 DDP needs ~63 GB a GPU
(its 19.6 GB of state replicated, plus 4.9 GB of gradient buckets) and FSDP ~49 GB (the state
shrinks to 9.8 GB); at N = 8 FSDP needs ~15 GB, room for 4x the sequences a GPU.

Checkpoints are the same files whatever the sharding (opengato.model.checkpoint): every process
takes part in gathering the full weights and optimizer state, and the main one writes them. So a
checkpoint written under FSDP loads in one process for evaluation, and resumes under FSDP, DDP or
in one process; under FSDP, the optimizer state is cut back into each process's shards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from opengato.model.gato import Gato


def shard_model(model: Gato) -> Gato:
    """Shard `model` in place over the processes (FSDP2): one unit per transformer block, the rest
    (the token embedding tied with the output layer, the observation positions, the patch encoder,
    the final norm) the root unit. Build the optimizer after this: the parameters are new
    DTensor objects."""
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    # The patch encoder has no gradient in a batch without images, and the processes' batches
    # differ: reduce zeros for it, as DDP's find_unused_parameters does, or the reduce-scatters
    # would not match. One difference from DDP: in a step where no process had an image, DDP
    # leaves its gradients None and AdamW skips it; here they are zero and AdamW still applies
    # its momentum and weight decay. Before torch 2.12 (2.11: the GPU machines this project
    # measures on) FSDP has no such setting: there the forward itself gives the encoder zero
    # gradients (`Gato.embed`), the same zeros, reduced in the same reduce-scatter.
    if hasattr(model, "set_reduce_scatter_unused_params"):  # torch >= 2.12
        model.set_reduce_scatter_unused_params(True)
    else:
        model.zero_grads_when_unused = True
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` was sharded by `shard_model`."""
    return isinstance(model, FSDPModule)


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[nn.Module | None, torch.optim.Optimizer | dict | None]:
    """What a checkpoint saves: `(model, optimizer)` themselves when `model` is not sharded.
    Sharded, every process must call it (the shards are all-gathered): the main process gets a
    plain Gato with the full weights on the CPU and the full optimizer state dict, in the format
    `Optimizer.state_dict()` has unsharded; the others `(None, None)`."""
    if not is_sharded(model):
        return model, optimizer
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)  # {} on the other processes
    optim = gather_optimizer_state(optimizer)
    if optim is None:  # not the main process
        return None, None
    for name, t in weights.items():  # on the CPU, where the offload copies nothing, a gathered
        if t.untyped_storage().nbytes() != t.nbytes:  # tensor is a view of the padded buffer,
            weights[name] = t.clone()  # which safetensors refuses to save
    with torch.device("meta"):  # no memory and no initialisation: the weights are assigned
        full = Gato(model.cfg)
    full.load_state_dict(weights, assign=True)
    full.lm_head.weight = full.wte.weight  # tied again (the gathered dict holds two copies)
    return full, optim


def gather_optimizer_state(optimizer: torch.optim.Optimizer) -> dict | None:
    """`optimizer.state_dict()` with each sharded moment all-gathered, on the CPU of the main
    process (the others, which must call it too, get None). It keeps torch's own format, states
    keyed by parameter index, as an unsharded run writes it (`get_optimizer_state_dict` would key
    them by parameter name)."""
    main = dist.get_rank() == 0

    def full(value):
        if not isinstance(value, DTensor):
            return value
        value = value.full_tensor()  # a collective: the same order on every process
        return value.cpu() if main else None

    state = optimizer.state_dict()
    state["state"] = {
        i: {k: full(v) for k, v in s.items()} for i, s in sorted(state["state"].items())
    }
    return state if main else None


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """A full optimizer state dict (as `gather_optimizer_state` or an unsharded run writes it)
    with each moment of a sharded parameter cut to this process's shard, for
    `optimizer.load_state_dict`; unchanged when no parameter is sharded."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(isinstance(p, DTensor) for p in params):
        return state

    def shard(value, param):
        if isinstance(param, DTensor) and torch.is_tensor(value) and value.shape == param.shape:
            # Every process read the same file: each keeps its own slice, nothing is sent.
            value = value.to(param.to_local().device)
            return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
        return value

    return {
        **state,
        "state": {
            i: {k: shard(v, params[i]) for k, v in s.items()} for i, s in state["state"].items()
        },
    }
