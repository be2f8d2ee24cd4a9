"""FSDP (`--shard fsdp`, training/sharding.py) on the CPU: two processes on the gloo backend train
gato-tiny as DDP does, write the checkpoint an unsharded run writes, and resume exactly; with
`--compile` both train as eager does."""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import pytest
import torch
from test_model import make_batch, tiny
from test_train import config, data_dir  # noqa: F401  (the tiny data root fixture)

from opengato.kinds import Kind
from opengato.model import checkpoint
from opengato.model.checkpoint import load_model
from opengato.model.inputs import GatoBatch
from opengato.training.config import TrainConfig
from opengato.training.resume import load_train_state, restore_train_state
from opengato.training.train import lr_lambda, run_train, train_step

NO_IMAGES = "classic/CartPole-v1,text/qa"
# fp32 on both sides: FSDP's reduce-scatter and DDP's all-reduce add the same gradients, but its
# updates run on shards of other shapes (rounding in fused AdamW and in the clipping norm). The
# largest difference seen was 6e-8.
LOSS_RTOL = 1e-6


def _two_ranks(rank: int, port: int, data_dir, out) -> None:  # noqa: F811
    """One of two processes: DDP and FSDP on control and text for 6 steps; FSDP with images 6
    steps, and 3 steps then resumed to 6."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    images = dict(shard="fsdp", dtype="bf16", eval_every=0, save_every=0)
    try:
        runs = {
            "ddp": run_train(config(data_dir, out / "ddp", tasks=NO_IMAGES)),
            "fsdp": run_train(config(data_dir, out / "fsdp", tasks=NO_IMAGES, shard="fsdp")),
            # Some steps have images on one rank only (the third: rank 1), so the ranks' patch
            # encoders differ in use; in bf16 autocast.
            "images": run_train(config(data_dir, out / "images", **images)),
            "first": run_train(config(data_dir, out / "resumed", steps=3, **images)),
            "rest": run_train(config(data_dir, out / "resumed", resume=True, **images)),
        }
    finally:
        dist.destroy_process_group()
    if rank == 0:
        out_json = {k: r["train_losses"] for k, r in runs.items()}
        out_json |= {f"{k}_val": runs[k]["val"] for k in ("ddp", "fsdp")}
        (out / "losses.json").write_text(json.dumps(out_json))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp_trains_like_ddp_saves_full_checkpoints_and_resumes(data_dir, tmp_path):  # noqa: F811
    torch.multiprocessing.spawn(_two_ranks, args=(_free_port(), data_dir, tmp_path), nprocs=2)
    runs = json.loads((tmp_path / "losses.json").read_text())

    # Steps of 2 x 2 sequences lose what DDP's lose, in training and in validation.
    assert runs["fsdp"] == pytest.approx(runs["ddp"], rel=LOSS_RTOL)
    assert runs["fsdp_val"] == pytest.approx(runs["ddp_val"], rel=LOSS_RTOL)
    # Resumed under FSDP from the step-3 checkpoint: exactly the uninterrupted losses.
    assert runs["first"] + runs["rest"] == runs["images"]

    # The checkpoint is the one an unsharded run writes: full weights, torch's optimizer format.
    fsdp, _, cfg = load_model(tmp_path / "fsdp")  # one process, for evaluation
    ddp, _, _ = load_model(tmp_path / "ddp")
    assert cfg["step"] == 6 and cfg["train"]["shard"] == "fsdp"
    assert fsdp.lm_head.weight.data_ptr() == fsdp.wte.weight.data_ptr()  # tied, stored once
    weights = zip(fsdp.state_dict().items(), ddp.state_dict().items(), strict=True)
    for (name, a), (_, b) in weights:
        if not name.startswith("patch_embed."):  # never used: only FSDP decays it (sharding.py)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    state, ddp_state = (load_train_state(tmp_path / r) for r in ("fsdp", "ddp"))
    assert state["optimizer"]["param_groups"] == ddp_state["optimizer"]["param_groups"]
    for i, s in ddp_state["optimizer"]["state"].items():
        for k, v in s.items():
            atol = 1e-4 * float(v.abs().max())  # the moments' scale: exp_avg_sq is ~1e-8
            torch.testing.assert_close(state["optimizer"]["state"][i][k], v, rtol=1e-4, atol=atol)

    # And its optimizer state loads into an unsharded run's optimizer.
    train = config(data_dir, tmp_path / "one")  # the options the runs above used
    optimizer = fsdp.configure_optimizers(train.weight_decay, train.lr, train.betas, train.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, train))
    assert restore_train_state(tmp_path / "fsdp", optimizer, scheduler, lambda s: 1.0) == 6


def test_zero_grads_for_an_unused_patch_encoder_change_nothing_else():
    """`Gato.zero_grads_when_unused`, FSDP's way on torch 2.11 (the GPU image): a forward without
    images gives the patch encoder zero gradients instead of none, and the same loss and the same
    other gradients, bit for bit."""
    b = make_batch()
    image = b.kind == Kind.IMAGE
    no_images = dataclasses.replace(
        b, kind=b.kind.masked_fill(image, int(Kind.CONTINUOUS)), patches=b.patches[:0],
        patch_index=b.patch_index[:0], patch_pos=b.patch_pos[:0],
    )  # fmt: skip
    grads = {}
    for zeros in (False, True):
        model = tiny()
        model.zero_grads_when_unused = zeros
        _, loss = model(no_images)
        loss.backward()
        grads[zeros] = loss, {n: p.grad for n, p in model.named_parameters()}
    (plain, plain_grads), (zeroed, zeroed_grads) = grads[False], grads[True]
    assert torch.equal(zeroed, plain)
    for name, g in zeroed_grads.items():
        if name.startswith("patch_embed."):
            assert plain_grads[name] is None and not g.any(), name
        else:
            assert torch.equal(g, plain_grads[name]), name


def test_fsdp_needs_several_processes(data_dir, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="--shard fsdp .* torchrun"):
        run_train(config(data_dir, tmp_path, shard="fsdp", steps=1, eval_every=0))
    assert not (tmp_path / checkpoint.LATEST_FILE).exists()


def _two_ranks_compiled(rank: int, port: int, data_dir, out) -> None:  # noqa: F811
    """One of two processes: DDP and FSDP, eager and with the blocks compiled (Inductor), 3
    steps each without dropout (Inductor draws its own)."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    runs = {}
    try:
        for shard in ("none", "fsdp"):
            for compile in (False, True):
                cfg = config(data_dir, out / f"{shard}-{compile}", tasks=NO_IMAGES, steps=3,
                             eval_every=0, save_every=0, dropout=0.0, shard=shard, compile=compile)  # fmt: skip
                runs[f"{shard}-{compile}"] = run_train(cfg)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        out_json = {k: [r["train_losses"], r["compiled"]] for k, r in runs.items()}
        (out / "compiled.json").write_text(json.dumps(out_json))


def test_compiled_blocks_train_under_ddp_and_fsdp(data_dir, tmp_path):  # noqa: F811
    """`--compile` (the blocks, compiled by Inductor; 42 s on 2 cores with cold caches) inside DDP
    and inside FSDP: no fallback to eager, and eager training's losses to Inductor's rounding."""
    torch.multiprocessing.spawn(_two_ranks_compiled, args=(_free_port(), data_dir, tmp_path),
                                nprocs=2)  # fmt: skip
    runs = json.loads((tmp_path / "compiled.json").read_text())
    for shard in ("none", "fsdp"):
        (eager, was_compiled), (compiled, is_compiled) = (
            runs[f"{shard}-False"],
            runs[f"{shard}-True"],
        )
        assert not was_compiled and is_compiled, shard
        assert compiled == pytest.approx(eager, rel=1e-4), shard


def _rows(b: GatoBatch, r0: int, r1: int) -> GatoBatch:
    """Rows [r0, r1) of a batch, with their image patches."""
    T = b.ids.shape[1]
    keep = (b.patch_index // T >= r0) & (b.patch_index // T < r1)
    return GatoBatch(b.ids[r0:r1], b.kind[r0:r1], b.obs_pos[r0:r1], b.target_weight[r0:r1],
                     b.patches[keep], b.patch_index[keep] - r0 * T,
                     b.patch_pos[keep]).with_target_index()  # fmt: skip


def _two_ranks_one_step(rank: int, port: int, out) -> None:
    """One of two processes taking a step of half the batch each, their gradients averaged as
    DDP and FSDP average them (by hand: a DDP reducer freed after the group once hung CI): rank
    0's rows hold 3x the targets of rank 1's. Rank 0 also takes the whole batch's step alone."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    full = make_batch(B=4, T=36)
    full.target_weight[2:, :27] = 0.0  # rows 2-3 keep 2 of their 8 action targets
    cfg = dataclasses.replace(TrainConfig(), grad_clip=0.0)
    model = tiny()  # eval mode: no dropout, no random patch positions
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    try:
        loss, _ = train_step(model, model, opt, _rows(full, 2 * rank, 2 * rank + 2),
                             torch.Generator(), 0, cfg, world=2)  # fmt: skip
        for p in model.parameters():  # what DDP and FSDP do: average the gradients
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= 2
        dist.all_reduce(loss)
        loss = float(loss)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        alone = tiny()
        _, want = alone(full.with_target_index())
        want.backward()
        grads = {n: p.grad for n, p in alone.named_parameters() if p.grad is not None}
        # relative to the largest gradient: a bias before a norm has ~0 gradient of its own
        scale = max(float(g.abs().max()) for g in grads.values())
        diff = max(float((model.get_parameter(n).grad - g).abs().max()) for n, g in grads.items())
        diff /= scale
        (out / "one_step.json").write_text(json.dumps([loss / 2, float(want.detach()), diff]))


def test_ddp_step_is_the_mean_over_all_targets(tmp_path):
    """Two processes with 3x more targets on one than on the other: their averaged gradient and
    loss are the whole batch's in one process (the mean over every target). Unscaled, each
    process's mean counted for half, a target of the sparse process 3x one of the dense."""
    torch.multiprocessing.spawn(_two_ranks_one_step, args=(_free_port(), tmp_path), nprocs=2)
    loss, want, grad_diff = json.loads((tmp_path / "one_step.json").read_text())
    assert loss == pytest.approx(want, rel=1e-5) and grad_diff < 1e-5
