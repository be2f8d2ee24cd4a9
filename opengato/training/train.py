"""Train a Gato model on a mixture of datasets: one visible loop (docs/method.md §4).

    opengato train --preset gato-tiny --tasks classic/CartPole-v1,text --steps 200 --context-len 256
    torchrun --nproc_per_node=2 -m opengato.cli train ...   # DistributedDataParallel

The loop: draw a batch from the mixture (seeded by seed, rank and step), forward, masked
next-token loss, backward, clip, AdamW step, learning-rate schedule; every `eval_every` steps the
validation loss on held-out episodes per domain and on action tokens only; every `save_every`
steps a checkpoint (opengato/model/checkpoint.py). Metrics go to TensorBoard and `metrics.jsonl`.

Exact resume: the data of step s is a pure function of (seed, rank, s), torch's generator (dropout,
patch positions) is reseeded from the same triple each step, and the optimizer and scheduler
states are restored, so `--resume` reproduces the losses of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from opengato.batches.sequences import LossWeights
from opengato.files import atomic_write_text
from opengato.kinds import Kind
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig


@dataclass
class TrainConfig:
    """Train a Gato model on a mixture of control tasks, text and image captions."""

    preset: str = "gato-tiny"
    """Model preset (opengato.model.gato.PRESETS): gato-tiny, gato-1m, gato-5m, gato-20m, gato-79m,
    gato-364m, gato-1.18b."""
    tasks: str = "default"
    """Comma-separated datasets: task names, globs (`babyai/*`), suites (`classic`), corpora
    (`text/python-docs`, `text/qa`, `vision/scenes`, `vision/photos`), aliases `text` and
    `vision`, or `default` (opengato.tasks.DEFAULT_TASKS + text + vision)."""
    data_dir: str | None = None
    """Data root written by `opengato collect`; default `$OPENGATO_DATA` or `~/.opengato/data`."""
    out_dir: str = "runs/gato"
    """Run folder: checkpoints (`step_*`, `latest.txt`), `metrics.jsonl`, TensorBoard `tb/`."""
    shard_dir: str | None = None
    """Where token shards are cached; default `<data_dir>/shards`."""
    steps: int = 1000
    """Optimizer steps in total (a resumed run continues up to this)."""
    batch_size: int = 16
    """Sequences per step, over all processes (each gets batch_size / world_size)."""
    context_len: int = 1024
    """Tokens per sequence L (the paper: 1024). Use 128-256 for the small presets on a CPU."""
    lr: float = 1e-4
    """Peak learning rate (the paper: 1e-4). Small presets on short runs like 1e-3."""
    warmup_steps: int = 100
    """Linear warm-up from 1e-7 to `lr` (the paper: 15k steps)."""
    min_lr_ratio: float = 0.1
    """Cosine decay from `lr` to `lr * min_lr_ratio` by the last step (the paper: 10x)."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    dropout: float = 0.1
    """Dropout of the model (the paper: 0.1)."""
    bin_init: Literal["normal", "smooth"] = "normal"
    """Initial embeddings of the continuous-value bins (GatoConfig.bin_init): `smooth` starts
    neighbouring bins close together; `normal` like every other token."""
    prompt_fraction: float = 0.25
    """Share of control sequences that get a prompt from another episode of the same task."""
    prompt_end_fraction: float = 0.5
    """Share of prompts taken from the end of that episode (the rest: a uniform window)."""
    prompt_len: int | None = None
    """Most tokens a prompt takes from the window (whole timesteps); default context_len // 2."""
    pack: bool = True
    """Fill the rest of a window whose episode ends early with the starts of other episodes of
    the same dataset, instead of padding (the paper does not say; padding was 22-23% of the
    demo's training tokens, docs/demo-variants.md)."""
    loss_weights: LossWeights = field(default_factory=LossWeights)
    """Weight of each token role as a target (the paper: text data and actions 1, observations
    0), e.g. `--loss-weights.observation 0.1`."""
    weights: str = ""
    """Mixture weights, `name=w` with names, globs or domains, e.g. `classic=1,babyai=2,text=0.5`
    (a domain's weight is split among its datasets). Defaults: each control suite 1, text 0.25,
    qa 0.1, captions 0.25."""
    val_fraction: float = 0.1
    """Share of each task's episodes held out for validation (corpora use their valid split)."""
    seed: int = 0
    """Seeds the model init, the data (per rank and step) and dropout."""
    eval_every: int = 100
    """Validation every this many steps (and at the end); 0 disables."""
    eval_batches: int = 4
    """Validation batches per dataset."""
    save_every: int = 500
    """Checkpoint every this many steps (and at the end); 0 saves only at the end."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep in out_dir."""
    log_every: int = 10
    """Training metrics every this many steps."""
    resume: bool = False
    """Continue the run in out_dir from its latest checkpoint (same config)."""
    init: str | None = None
    """Start from this checkpoint's weights (fine-tuning); the model shape must match."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Compute dtype: bf16 runs the model under autocast (weights and optimizer stay fp32)."""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`, ..."""
    compile: bool = False
    """torch.compile the model."""
    progress: bool = True
    """Show a progress bar."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """How values become tokens (must match between training and use)."""
    resume_force: bool = False
    """With --resume: continue even though options that change the run (lr, batch size, seed,
    tasks, ...) differ from the checkpoint's; the new values are used from the resumed step on
    and recorded. Without it such a resume is refused, listing each change."""


# Options a resumed run may change without --resume-force: they extend the run, move it (the
# shards are a cache, checked against the tokenizer), or only change what is logged and kept, not
# what it computes (`steps` reshapes the decay to the new end).
RESUME_MAY_CHANGE = {"steps", "progress", "log_every", "eval_every", "save_every",
                     "keep_checkpoints", "device", "resume", "resume_force", "out_dir",
                     "shard_dir", "init"}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# helpers


class _LossModule(nn.Module):
    """Wraps Gato so that DistributedDataParallel/compile see the loss as `forward`."""

    def __init__(self, gato: nn.Module):
        super().__init__()
        self.gato = gato

    def forward(self, batch):
        return self.gato.compute_loss(batch)


def lr_lambda(step: int, cfg: TrainConfig) -> float:
    """Multiplier of `cfg.lr` at `step`: linear 1e-7 -> 1 over warm-up, then cosine to min_lr_ratio."""
    start = 1e-7 / cfg.lr
    if step < cfg.warmup_steps:
        return start + (1.0 - start) * step / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _peak_memory_mb(device: torch.device) -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def autocast(device: torch.device, dtype: str):
    """bf16 autocast on `device` when `dtype` is "bf16" (weights stay fp32), else nothing."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def validation_loss(model, val_sets, cfg: TrainConfig, device, batch_size: int) -> dict[str, float]:
    """Validation loss per domain (`val/<domain>/loss`: the unweighted mean over the tokens
    that are targets under `cfg.loss_weights`), on action tokens only (`val/<domain>/action_loss`),
    and overall (`val/loss`, `val/action_loss`).

    Each dataset's batches are drawn from a fixed generator, so every evaluation sees the same
    held-out windows (no prompts)."""
    from opengato.batches.sequences import make_batch
    from opengato.model.gato import loss_mask

    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}  # key -> [loss sum, count]
    for i, mixture in enumerate(val_sets):
        rng = np.random.default_rng([cfg.seed, 0x5EED, i])
        for _ in range(cfg.eval_batches):
            windows = mixture.sample_windows(rng, batch_size)
            batch = make_batch(windows, cfg.loss_weights).to(device)
            with autocast(device, cfg.dtype):
                per_tok = model.compute_loss(batch, reduction="none").float()  # (B, T)
            counted = loss_mask(batch)
            is_action = (batch.kind == Kind.DISCRETE) | (batch.kind == Kind.CONTINUOUS)
            action = counted & is_action & (batch.obs_pos < 0)
            domain = windows[0].domain
            for key, mask in (("loss", counted), ("action_loss", action)):
                n = int(mask.sum())
                if n:
                    for k in (f"val/{domain}/{key}", f"val/{key}"):
                        acc = sums.setdefault(k, [0.0, 0])
                        acc[0] += float(per_tok[mask].sum())
                        acc[1] += n
    model.train(was_training)
    return {k: s / n for k, (s, n) in sums.items()}


def _prune_checkpoints(out_dir: Path, keep: int) -> None:
    steps = sorted(p for p in out_dir.glob("step_*") if p.is_dir())
    for p in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the loop


def run_train(cfg: TrainConfig) -> dict:
    """Train per `cfg`; returns a summary (final losses, tokens/s, peak memory, checkpoint)."""
    from opengato.batches.sequences import Mixture, Split, build_shards, resolve_sources, step_rng
    from opengato.data.datasets import data_root
    from opengato.model import checkpoint
    from opengato.model.gato import Gato, check_preset, make_config

    check_preset(cfg.preset)  # before any data is built
    if cfg.resume and cfg.init:
        raise ValueError("--resume continues a run and --init starts a new one: pass only one")
    out_dir = Path(cfg.out_dir)
    if os.environ.get("RANK", "0") == "0":  # what a crash mid-write left (checkpoint.py)
        checkpoint.clean_leftovers(out_dir)
    # --resume: refuse (before any work) to continue with options other than the checkpoint's.
    resume_config, forced = None, []
    if cfg.resume and ((out_dir / checkpoint.LATEST_FILE).exists()
                       or (out_dir / checkpoint.CONFIG_FILE).exists()):  # fmt: skip
        resume_config = checkpoint.read_config(out_dir)  # a broken one raises: never start over
        current = json.loads(json.dumps(asdict(cfg), default=str))
        defaults = json.loads(json.dumps(asdict(TrainConfig()), default=str))
        # The tokenizer is never open to change: check_tokenizer refuses any difference.
        forced = checkpoint.config_changes(resume_config.get("train", {}), current, defaults,
                                           RESUME_MAY_CHANGE | {"tokenizer"})  # fmt: skip
        if forced and not cfg.resume_force:
            raise ValueError(
                f"--resume: {resume_config['path']} was trained with other options: "
                + "; ".join(forced)
                + ". Pass the checkpoint's values to continue that run, or --resume-force to "
                "continue it with the new ones (from the resumed step on)"
            )
        checkpoint.check_tokenizer(resume_config, cfg.tokenizer)

    # -- processes and devices -----------------------------------------------------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(cfg.device, local_rank)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} processes")
    local_batch = cfg.batch_size // world
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)
    out_dir = Path(cfg.out_dir)

    # -- seeding: the one place (model init here; data and dropout per step below) ------------
    torch.manual_seed(cfg.seed)

    # -- data ----------------------------------------------------------------------------------
    tokenizer = Tokenizer(cfg.tokenizer)
    sources = resolve_sources(cfg.tasks)
    root = data_root(cfg.data_dir)
    shard_dir = Path(cfg.shard_dir) if cfg.shard_dir else root / "shards"
    if is_main:  # one process tokenises; the others then find the shards up to date
        build_shards(sources, tokenizer, root, shard_dir, log=log)
    if world > 1:
        dist.barrier()
    shards = build_shards(sources, tokenizer, root, shard_dir, log=log)
    pad = tokenizer.pad_id
    train_mix = Mixture(shards, cfg.context_len, cfg.weights, Split("train", cfg.val_fraction),
                        cfg.prompt_fraction, cfg.prompt_end_fraction, cfg.prompt_len, pad,
                        cfg.loss_weights, cfg.pack)  # fmt: skip
    val_sets = []
    for s in shards:
        if (
            Split("val", cfg.val_fraction).episodes(s)[1]
            > Split("val", cfg.val_fraction).episodes(s)[0]
        ):
            val_sets.append(Mixture([s], cfg.context_len, None, Split("val", cfg.val_fraction), 0.0,
                                    pad_id=pad))  # fmt: skip
    for s, p in zip(shards, train_mix.probs, strict=True):
        log(f"  {s.name:<40} {s.num_episodes:>6} episodes {s.num_tokens:>10} tokens  p={p:.3f}")

    # -- model, optimizer, schedule -----------------------------------------------------------
    bins = (tokenizer.continuous_offset, tokenizer.continuous_offset + cfg.tokenizer.num_bins)
    model_config = make_config(cfg.preset, tokenizer.vocab_size, dropout=cfg.dropout,
                               context_len=cfg.context_len, bin_ids=bins,
                               bin_init=cfg.bin_init)  # fmt: skip
    model = Gato(model_config)
    start_step = 0
    resume_from = Path(resume_config["path"]) if resume_config else None
    if cfg.resume and resume_from is None:
        log(f"--resume: no checkpoint in {out_dir}, starting from scratch")
    if forced:
        log("--resume-force: continuing with changed options: " + "; ".join(forced))
    # The bytes of the text model the tokenizer read: compared with a checkpoint's, and copied
    # into every checkpoint this run writes.
    from opengato.tokens.text import text_model_file

    text_file = text_model_file(cfg.tokenizer.text_model, cfg.tokenizer.text_vocab_size)
    text_model_bytes = text_file.read_bytes()
    init_from = resume_from or cfg.init
    if init_from:
        ck_config = resume_config or checkpoint.read_config(init_from)
        checkpoint.check_compatible(ck_config, model_config, cfg.tokenizer, text_model_bytes)
        checkpoint.load_weights(model, ck_config["path"])
        log(f"loaded weights from {ck_config['path']} (step {ck_config['step']})")
    model.to(device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, cfg.betas, cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg))
    if resume_from:
        state = checkpoint.load_train_state(resume_from)
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = int(state["step"])
        # The moments and step counts are the checkpoint's; the hyperparameters and schedule this
        # run's (the same unless --resume-force, or a longer `steps` reshaping the decay).
        for group, h in zip(optimizer.param_groups, hyper, strict=True):
            group.update(h)
            group["lr"] = group["initial_lr"] * lr_lambda(start_step, cfg)
        scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    log(model.describe())

    runner: nn.Module = _LossModule(model)
    if world > 1:
        # The patch embedding has no gradient in batches without images.
        runner = nn.parallel.DistributedDataParallel(
            runner,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    if cfg.compile:
        runner = torch.compile(runner)

    writer = metrics_file = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        out_dir.mkdir(parents=True, exist_ok=True)
        config_text = json.dumps(asdict(cfg), indent=1)
        atomic_write_text(out_dir / "train_config.json", config_text)
        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_step or None)
        if start_step:  # drop what was logged after the checkpoint, before the interruption
            checkpoint.truncate_metrics(out_dir / "metrics.jsonl", start_step)
        metrics_file = open(out_dir / "metrics.jsonl", "a" if start_step else "w")

    def record(step: int, metrics: dict) -> None:
        if not is_main:
            return
        for k, v in metrics.items():
            writer.add_scalar(k, v, step)
        metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
        metrics_file.flush()

    def save(step: int) -> Path | None:
        if not is_main:
            return None
        path = checkpoint.save_checkpoint(
            out_dir / f"step_{step:07d}", model, model_config, cfg.tokenizer, asdict(cfg),
            optimizer, scheduler, step=step, rng_state={"torch": torch.get_rng_state()},
            text_model=text_model_bytes,
        )  # fmt: skip
        _prune_checkpoints(out_dir, cfg.keep_checkpoints)
        return path

    # -- training ----------------------------------------------------------------------------
    from tqdm.auto import tqdm

    losses: list[float] = []
    val: dict[str, float] = {}
    tokens_per_step = cfg.batch_size * cfg.context_len
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps,
               disable=not (is_main and cfg.progress), dynamic_ncols=True)  # fmt: skip
    t_start, timed_steps, timed_time = time.perf_counter(), 0, 0.0
    last_ckpt = None
    if cfg.eval_every and start_step == 0:  # the baseline every curve starts from
        if is_main:
            record(0, validation_loss(model, val_sets, cfg, device, local_batch))
        if world > 1:
            dist.barrier()
    model.train()
    for step in bar:
        t0 = time.perf_counter()
        # Seeding, per step: the data and torch's generator (dropout, patch positions) are pure
        # functions of (seed, rank, step), so a resumed run continues exactly.
        rng = step_rng(cfg.seed, rank, step)
        torch.manual_seed(int(rng.integers(2**62)))
        batch, _ = train_mix.sample_batch(rng, local_batch)
        host_kind = batch.kind  # for the padding share when logging: no device sync per step
        batch = batch.to(device, non_blocking=True)
        data_s = time.perf_counter() - t0
        with autocast(device, cfg.dtype):
            loss = runner(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if cfg.grad_clip > 0
            else torch.tensor(0.0)
        )
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.detach())
        if world > 1:  # report the mean over processes
            t = torch.tensor([loss_value], device=device)
            dist.all_reduce(t)
            loss_value = float(t) / world
        losses.append(loss_value)
        dt = time.perf_counter() - t0
        if step > start_step:  # the first step pays for warm-up allocations
            timed_steps, timed_time = timed_steps + 1, timed_time + dt
        tok_s = tokens_per_step / dt
        bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tok_s:,.0f}")
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            record(done, {"train/loss": loss_value, "train/lr": scheduler.get_last_lr()[0],
                          "train/grad_norm": float(grad_norm), "train/tokens_per_s": tok_s,
                          "train/data_s": data_s, "train/step_s": dt,
                          "train/pad_fraction": float((host_kind == Kind.PAD).float().mean())})  # fmt: skip
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            if is_main:
                val = validation_loss(model, val_sets, cfg, device, local_batch)
                record(done, val)
                bar.write(
                    f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(val.items()))
                )
            if world > 1:
                dist.barrier()
        if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
            last_ckpt = save(done) or last_ckpt
    bar.close()

    summary = {
        "steps": cfg.steps,
        "start_step": start_step,
        "final_train_loss": losses[-1] if losses else None,
        "train_losses": losses,
        "val": val,
        "tokens_per_s": tokens_per_step * timed_steps / timed_time if timed_time else None,
        "wall_s": time.perf_counter() - t_start,
        "params": model.num_params(),
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "device": str(device),
        "world_size": world,
        **_peak_memory_mb(device),
    }
    if is_main:
        writer.close()
        metrics_file.close()
        tps = f"{summary['tokens_per_s']:,.0f}" if summary["tokens_per_s"] else "-"
        log(f"done: train loss {summary['final_train_loss']}, {tps} tokens/s, "
            f"peak RSS {summary['peak_rss_mb']:.0f} MB, checkpoint {summary['checkpoint']}")  # fmt: skip
    if world > 1:
        dist.barrier()
    if own_group:
        dist.destroy_process_group()
    return summary
