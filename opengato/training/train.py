"""Train a Gato model on a mixture of datasets: one visible loop (docs/method.md §4).

    opengato train --preset gato-tiny --tasks classic/CartPole-v1,text --steps 200 --context-len 256
    torchrun --nproc_per_node=2 -m opengato.cli train ...   # DistributedDataParallel

`run_train` (its body, `_train`) reads top to bottom: the options (held-out tasks are refused
without `--allow-heldout-tasks`, opengato/tasks.py), the run folder (a resume with changed
options is refused), processes and devices, seeding, data (token shards, the training mixture,
held-out sets), model, optimizer and schedule; then the loop: take the step's batch from the
mixture (built ahead by a background thread, batches/prefetch.py), forward (the weighted
next-token loss), backward, clip, AdamW step, learning-rate schedule; every `eval_every` steps
the validation loss on held-out episodes (training/validation.py); every `save_every` steps a
checkpoint (opengato/model/checkpoint.py), or with `--early-stop N` one at each new best
validation loss, until N validations in a row bring none (`opengato finetune` stops this way).
Metrics go to `metrics.jsonl`, TensorBoard and a progress bar (training/logger.py).

Keeping a GPU busy: a step reads nothing back from the device. The batch is checked and its
loss positions found on the host (`step_data`, `GatoBatch.target_index`), the losses stay on the
device until a log step reads them all at once, and the speed is measured between those reads.
`--compile` compiles the forward and backward: each transformer block (one graph they share) or,
with `--compile-scope model`, all of it as one graph (a failure falls back to eager).

Exact resume: the data of step s and torch's generator of step s (dropout, image patch
positions) are seeded from (seed, rank, s), and the optimizer and scheduler states are restored
(training/resume.py), so `--resume` reproduces the losses of an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from opengato.batches.mixture import Mixture, step_rng
from opengato.batches.prefetch import Prefetcher, pin_memory
from opengato.batches.windows import Split
from opengato.kinds import Kind
from opengato.model import checkpoint
from opengato.model.gato import Gato
from opengato.model.inputs import GatoBatch
from opengato.model.presets import check_preset, make_config
from opengato.tokens.tokenizer import Tokenizer
from opengato.training.config import TrainConfig
from opengato.training.distributed import (
    Processes,
    autocast,
    barrier,
    default_generator,
    end_processes,
    global_mean_factor,
    local_batch_size,
    mean_over_processes,
    peak_memory_mb,
    start_processes,
    wrap_model,
)
from opengato.training.logger import TrainLogger
from opengato.training.resume import prune_checkpoints, restore_train_state, resume_point
from opengato.training.sharding import full_state
from opengato.training.validation import EarlyStop, validation_loss, validation_sets


def lr_lambda(step: int, cfg: TrainConfig) -> float:
    """Multiplier of `cfg.lr` at `step`: linear 1e-7 -> 1 over warm-up, then cosine to min_lr_ratio."""
    start = 1e-7 / cfg.lr
    if step < cfg.warmup_steps:
        return start + (1.0 - start) * step / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def run_train(cfg: TrainConfig) -> dict:
    """Train per `cfg`; returns a summary (final losses, tokens/s, peak memory, checkpoint).

    Training seeds torch's default generator at every step, because dropout can draw from no
    other; the caller's CPU generator state is given back when it returns (a CUDA device's
    generator is left as the last step seeded it)."""
    with torch.random.fork_rng(devices=[]):
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict:
    check_options(cfg)  # before any data is built
    resumed, forced = open_run_folder(cfg, TrainConfig())  # refuses here, before any work
    procs = start_processes(cfg.device)
    local_batch, device = local_batch_size(cfg.batch_size, procs), procs.device
    log = TrainLogger(procs.is_main, cfg.progress)
    # The one place seeds are set: the model's initialisation here; the data and torch's
    # generator of each step (dropout, patch positions) from (seed, rank, step) in the loop.
    torch.manual_seed(cfg.seed)
    tokenizer = Tokenizer(cfg.tokenizer)
    train_mix, val_sets = build_data(cfg, tokenizer, procs, log)
    val_batch = cfg.eval_batch_size or local_batch
    model, text_model = build_model(cfg, tokenizer, device, resumed, forced, log)
    runner = wrap_model(model, procs, cfg.compile, cfg.shard, cfg.compile_scope)
    optimizer, scheduler, start_step = build_optimizer(model, cfg, resumed)
    log.open(Path(cfg.out_dir), asdict(cfg), start_step, cfg.steps)

    generator = default_generator(device)  # seeded every step: dropout, patch positions
    eager = getattr(runner, "_orig_mod", runner)  # what torch.compile compiled, if it did
    stopper = EarlyStop(cfg.early_stop) if cfg.early_stop and val_sets else None
    losses, pending, real, val, saved, stopped = [], [], 0, {}, None, None
    if cfg.eval_every and start_step == 0:  # the baseline every curve starts from
        val = validate(model, val_sets, cfg, procs, log, val_batch, 0)
        if stopper is not None and stopper.update(0, val, procs).improved:  # the first best
            saved = save(cfg, procs, 0, model, optimizer, scheduler, text_model)
    model.train()
    data = step_data(cfg, train_mix, model, procs, local_batch)
    with Prefetcher(data, start_step, cfg.steps, cfg.prefetch) as steps:
        t_wait = time.perf_counter()
        for step, (seed, host_batch, real_tokens) in steps:
            batch = host_batch.to(device, non_blocking=True)
            log.step_done(time.perf_counter() - t_wait)
            loss, grad_norm, runner = train_step_or_eager(
                runner, eager, model, optimizer, batch, generator, seed, cfg, log, procs.world
            )
            optimizer.step()
            scheduler.step()
            pending.append(loss)
            real += real_tokens
            done, first = step + 1, step == start_step
            # The loop reads from the device only here, every log step (and after the first
            # step, whose time the speed leaves out), and in validation and checkpoints.
            if first or done % cfg.log_every == 0 or done == cfg.steps:
                losses += read_losses(pending, procs)
                real = round(mean_over_processes(real, procs) * procs.world)
                speed = log.interval_done(real, len(pending) * cfg.batch_size * cfg.context_len,
                                          warmup=first)  # fmt: skip
                pending, real = [], 0
                log.show_loss(losses[-1])
            if done % cfg.log_every == 0 or done == cfg.steps:
                log.record(done, log_metrics(losses[-1], scheduler, grad_norm, speed))
            validated = bool(cfg.eval_every) and (done % cfg.eval_every == 0 or done == cfg.steps)
            if validated:
                with log.untimed(device):
                    val = validate(model, val_sets, cfg, procs, log, val_batch, done)
                log.print(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(val.items())))  # fmt: skip
            stop = validated and stopper is not None and stopper.update(done, val, procs).stop
            if should_save(cfg, done, stopper, validated):
                with log.untimed(device):
                    saved = save(cfg, procs, done, model, optimizer, scheduler, text_model)
            if stop:
                stopped = done
                log.print(f"early stop at step {done}: the validation action loss has not "
                          f"improved for {cfg.early_stop} validations (best: step {stopper.best_step})")  # fmt: skip
                break
            t_wait = time.perf_counter()
    log.close()
    summary = summarize(cfg, procs, log, model, start_step, losses, val, saved)
    summary["compiled"] = runner is not eager  # False also when --compile fell back to eager
    summary["early_stop"] = stopper.summary(stopped) if stopper is not None else None
    end_processes(procs)
    return summary


def check_options(cfg: TrainConfig) -> None:
    """Refuse, before any work, an unknown preset, held-out tasks without
    --allow-heldout-tasks (opengato.tasks.check_not_heldout), early stopping without
    validations and a negative validation batch."""
    from opengato.tasks import check_not_heldout

    check_preset(cfg.preset)
    check_not_heldout(cfg.tasks, cfg.allow_heldout_tasks)
    if cfg.early_stop and not cfg.eval_every:
        raise ValueError("--early-stop stops on validations: set --eval-every > 0")
    if cfg.eval_batch_size < 0:
        raise ValueError(f"--eval-batch-size must be >= 0 (0: the training batch's rows), "
                         f"got {cfg.eval_batch_size}")  # fmt: skip


def should_save(cfg: TrainConfig, step: int, stopper: EarlyStop | None, validated: bool) -> bool:
    """Whether to checkpoint `step`: under early stopping, when its validation was the best so
    far (the run's last checkpoint is then its best); else every `save_every` steps and at the
    end."""
    if stopper is not None:
        return validated and stopper.improved
    return bool(cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps


def step_data(
    cfg: TrainConfig, mix: Mixture, model: Gato, procs: Processes, batch_size: int
) -> Callable[[int], tuple[int, GatoBatch, int]]:
    """What the loop needs of step s, a pure function of (seed, rank, s) that the prefetch
    worker (batches/prefetch.py) builds ahead: the seed of torch's generator for the step
    (dropout, patch positions), the batch, and how many of its tokens are not padding. The batch
    is checked against the model's observation-position table here, on the host, so that the
    forward never reads its positions back from a GPU; for a GPU it is pinned."""
    pin = procs.device.type == "cuda"

    def data(step: int) -> tuple[int, GatoBatch, int]:
        rng = step_rng(cfg.seed, procs.rank, step)
        seed = int(rng.integers(2**62))  # drawn first: the data comes after it
        batch, _ = mix.sample_batch(rng, batch_size)
        model.check_obs_pos(batch.obs_pos)
        real_tokens = int((batch.kind != Kind.PAD).sum())
        return seed, pin_memory(batch) if pin else batch, real_tokens

    return data


def train_step(
    runner: nn.Module,
    model: Gato,
    optimizer: torch.optim.Optimizer,
    batch: GatoBatch,
    generator: torch.Generator,
    seed: int,
    cfg: TrainConfig,
    world: int = 1,
) -> tuple[Tensor, Tensor]:
    """Forward (through `runner`: the model, in DDP, compiled), backward and gradient clipping
    of one batch, torch's generator seeded with the step's `seed` first (so that a step tried
    again draws the same). Returns the loss and the gradient norm (0 without clipping), both
    left on the device: reading them would wait for it. Of `world` > 1 processes, the loss is
    this process's part of the mean over all of the step's targets (`global_mean_factor`): the
    processes' losses average to that mean."""
    generator.manual_seed(seed)
    optimizer.zero_grad(set_to_none=True)
    # The number of targets and of image patches changes from batch to batch: compiled, those
    # sizes are symbolic from the first step on, instead of recompiling at the second.
    for t in (batch.target_index, batch.patches, batch.patch_index, batch.patch_pos):
        torch._dynamo.maybe_mark_dynamic(t, 0)
    with autocast(batch.ids.device, cfg.dtype):
        _, loss = runner(batch)
    if world > 1:
        loss = loss * global_mean_factor(batch, world)
    loss.backward()
    if cfg.grad_clip <= 0:
        return loss.detach(), torch.zeros((), device=loss.device)
    return loss.detach(), torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)


def train_step_or_eager(
    runner: nn.Module,
    eager: nn.Module,
    model: Gato,
    optimizer: torch.optim.Optimizer,
    batch: GatoBatch,
    generator: torch.Generator,
    seed: int,
    cfg: TrainConfig,
    log: TrainLogger,
    world: int = 1,
) -> tuple[Tensor, Tensor, nn.Module]:
    """`train_step` through `runner`; if the compiled step fails, warn once and take the step
    again eager. Returns the loss, the gradient norm and the runner of the next steps."""
    try:
        return (*train_step(runner, model, optimizer, batch, generator, seed, cfg, world), runner)
    except Exception as err:  # compiling failed: warn once, then train eager
        if runner is eager:
            raise
        warn_compile_failed(err, log)
        return (*train_step(eager, model, optimizer, batch, generator, seed, cfg, world), eager)


def log_metrics(
    loss: float, scheduler: torch.optim.lr_scheduler.LRScheduler, grad_norm: Tensor, speed: dict
) -> dict:
    """What a log step records: the loss, the learning rate, the gradient norm, the speed."""
    return {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm), **speed}  # fmt: skip


def warn_compile_failed(err: Exception, log: TrainLogger) -> None:
    """Say that `--compile` failed (compiling, or running the compiled step) and that the run
    goes on eager."""
    message = f"--compile: the compiled step failed, training eager from here on ({err!r})"
    log.print(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def read_losses(pending: list[Tensor], procs: Processes) -> list[float]:
    """The losses of the steps since the last read (scalars on the device), each averaged over
    the processes, as floats: where the loop waits for the device."""
    values = torch.stack(pending)
    if procs.world > 1:
        dist.all_reduce(values)
    return [v / procs.world for v in values.tolist()]


def summarize(
    cfg: TrainConfig,
    procs: Processes,
    log: TrainLogger,
    model: Gato,
    start_step: int,
    losses: list[float],
    val: dict[str, float],
    saved: Path | None,
) -> dict:
    """The run's summary (`run_train`'s result), with a last line printed: the losses, the
    speed, peak memory and the last checkpoint written."""
    summary = {"steps": cfg.steps, "start_step": start_step, "train_losses": losses, "val": val,
               "final_train_loss": losses[-1] if losses else None, "params": model.num_params(),
               "checkpoint": str(saved) if saved else None, **log.speed(),
               "device": str(procs.device), "world_size": procs.world,
               **peak_memory_mb(procs.device)}  # fmt: skip
    log.print(f"done: train loss {summary['final_train_loss']}, {log.speed_text()} tokens/s, "
              f"peak RSS {summary['peak_rss_mb']:.0f} MB, checkpoint {summary['checkpoint']}")  # fmt: skip
    return summary


def open_run_folder(cfg: TrainConfig, defaults: TrainConfig) -> tuple[dict | None, list[str]]:
    """Clean what a crash mid-write left in the run folder, and with --resume read its latest
    checkpoint's config: `(config or None, the options this run changes)` (training/resume.py
    refuses the changes without --resume-force)."""
    if cfg.resume and cfg.init:
        raise ValueError("--resume continues a run and --init starts a new one: pass only one")
    if os.environ.get("RANK", "0") == "0":  # one process cleans (checkpoint.py)
        checkpoint.clean_leftovers(Path(cfg.out_dir))
    return resume_point(cfg, defaults)


def build_data(
    cfg: TrainConfig, tokenizer: Tokenizer, procs: Processes, log: TrainLogger
) -> tuple[Mixture, list[Mixture]]:
    """The training mixture and the held-out sets, from the datasets' token shards (one
    process tokenises; the others then find the shards up to date)."""
    from opengato.batches import sources
    from opengato.data.root import data_root

    wanted = sources.resolve_sources(cfg.tasks)
    root = data_root(cfg.data_dir)
    shard_dir = Path(cfg.shard_dir) if cfg.shard_dir else root / "shards"
    if cfg.tokenize_workers < 0:
        raise ValueError(
            f"--tokenize-workers must be >= 0 (0: one per core), not {cfg.tokenize_workers}"
        )
    if procs.is_main:
        sources.build_shards(wanted, tokenizer, root, shard_dir, log=log.print,
                             workers=cfg.tokenize_workers)  # fmt: skip
    barrier(procs)
    shards = sources.build_shards(wanted, tokenizer, root, shard_dir, log=log.print)
    train_mix = Mixture(shards, cfg.context_len, cfg.weights, Split("train", cfg.val_fraction),
                        cfg.prompt_fraction, cfg.prompt_end_fraction, cfg.prompt_len,
                        tokenizer.pad_id, cfg.loss_weights, cfg.pack)  # fmt: skip
    # p: the dataset's share of the windows; loss: its expected share of the loss's targets
    for s, p, share in zip(shards, train_mix.probs, train_mix.loss_shares(), strict=True):
        log.print(f"  {s.name:<40} {s.num_episodes:>6} episodes {s.num_tokens:>10} tokens  "
                  f"p={p:.3f}  loss {share:6.1%}")  # fmt: skip
    return train_mix, validation_sets(shards, cfg, tokenizer.pad_id)


def build_model(
    cfg: TrainConfig,
    tokenizer: Tokenizer,
    device: torch.device,
    resumed: dict | None,
    forced: list[str],
    log: TrainLogger,
) -> tuple[Gato, bytes]:
    """The model of `cfg.preset` for this tokenizer, with the weights of the checkpoint it
    resumes or starts from (--resume, --init), on `device` (its size printed); and the bytes of
    the text model the tokenizer reads, compared with that checkpoint's and copied into every
    checkpoint this run writes."""
    from opengato.tokens.text import text_model_file

    if cfg.resume and resumed is None:
        log.print(f"--resume: no checkpoint in {cfg.out_dir}, starting from scratch")
    if forced:
        log.print("--resume-force: continuing with changed options: " + "; ".join(forced))
    bins = (tokenizer.continuous_offset, tokenizer.continuous_offset + cfg.tokenizer.num_bins)
    model_config = make_config(cfg.preset, tokenizer.vocab_size, dropout=cfg.dropout,
                               context_len=cfg.context_len, bin_ids=bins,
                               bin_init=cfg.bin_init)  # fmt: skip
    model = Gato(model_config)
    text_file = text_model_file(cfg.tokenizer.text_model, cfg.tokenizer.text_vocab_size)
    text_model = text_file.read_bytes()
    start_from = resumed or (checkpoint.read_config(cfg.init) if cfg.init else None)
    if start_from:
        checkpoint.check_compatible(start_from, model_config, cfg.tokenizer, text_model)
        checkpoint.load_weights(model, start_from["path"])
        log.print(f"loaded weights from {start_from['path']} (step {start_from['step']})")
    log.print(model.describe())
    return model.to(device), text_model


def build_optimizer(
    model: Gato, cfg: TrainConfig, resumed: dict | None
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, int]:
    """AdamW and its learning-rate schedule (`lr_lambda`), in the state of the checkpoint a
    --resume continues; and the step the run starts from."""
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, cfg.betas, cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg))
    if resumed is None:
        return optimizer, scheduler, 0
    step = restore_train_state(resumed["path"], optimizer, scheduler, lambda s: lr_lambda(s, cfg))
    return optimizer, scheduler, step


def validate(
    model: Gato,
    val_sets: list[Mixture],
    cfg: TrainConfig,
    procs: Processes,
    log: TrainLogger,
    batch_size: int,
    step: int,
) -> dict[str, float]:
    """The validation loss at `step`, recorded (the main process computes it while the others
    wait and get `{}`; sharded, every process computes it)."""
    val = {}
    if procs.is_main or cfg.shard == "fsdp":  # a sharded forward needs every process
        val = validation_loss(model, val_sets, cfg, procs.device, batch_size)
        log.record(step, val)
    barrier(procs)
    return val


def save(
    cfg: TrainConfig,
    procs: Processes,
    step: int,
    model: Gato,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    text_model: bytes,
) -> Path | None:
    """Checkpoint `step_<step>` in the run folder, keeping the newest `keep_checkpoints`. Every
    process calls it (sharded, they gather the full state); the main one writes it."""
    model, optimizer = full_state(model, optimizer)
    if not procs.is_main:
        return None
    out_dir = Path(cfg.out_dir)
    path = checkpoint.save_checkpoint(
        out_dir / f"step_{step:07d}", model, model.cfg, cfg.tokenizer, asdict(cfg), optimizer,
        scheduler, step=step, text_model=text_model, extra={"world_size": procs.world},
    )  # fmt: skip
    prune_checkpoints(out_dir, cfg.keep_checkpoints)
    return path
