"""Continuing a run (`opengato train --resume`): refusing changed options before any work,
restoring the optimizer and the schedule, and keeping only the newest step checkpoints.

A checkpoint's ``train_state.pt`` (written by `opengato.model.checkpoint.save_checkpoint`)
holds the optimizer and scheduler states and the step. Nothing else is needed for an exact
resume: the data and the torch generator of every step are seeded from (seed, rank, step).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from opengato.model import checkpoint
from opengato.model.checkpoint import CheckpointError
from opengato.training.config import TrainConfig
from opengato.training.sharding import shard_optimizer_state

# Options a resumed run may change without --resume-force: they extend the run, move it (the
# shards are a cache, checked against the tokenizer; `shard`: checkpoints are the same files
# sharded or not), or only change what is logged and kept, not what it computes (`steps` reshapes
# the decay to the new end).
RESUME_MAY_CHANGE = {"steps", "progress", "log_every", "eval_every", "save_every",
                     "keep_checkpoints", "device", "resume", "resume_force", "out_dir",
                     "shard_dir", "init", "shard", "prefetch"}  # fmt: skip


def resume_point(cfg: TrainConfig, defaults: TrainConfig) -> tuple[dict | None, list[str]]:
    """With `--resume` and a checkpoint in `cfg.out_dir`: its config, and the options this run
    changes (`"field: old -> new"`; a field the checkpoint predates counts as in `defaults`).
    `(None, [])` for a new run.

    Raises ValueError when options changed without `--resume-force`, and CheckpointError for a
    broken run folder or another tokenizer: before any work, so a refused run writes nothing."""
    out_dir = Path(cfg.out_dir)
    has_checkpoint = (out_dir / checkpoint.LATEST_FILE).exists() or (
        out_dir / checkpoint.CONFIG_FILE
    ).exists()
    if not (cfg.resume and has_checkpoint):
        return None, []
    recorded = checkpoint.read_config(out_dir)  # a broken one raises: never start over
    current = json.loads(json.dumps(asdict(cfg), default=str))
    default = json.loads(json.dumps(asdict(defaults), default=str))
    # The tokenizer is never open to change: check_tokenizer refuses any difference.
    changes = config_changes(recorded.get("train", {}), current, default,
                             RESUME_MAY_CHANGE | {"tokenizer"})  # fmt: skip
    # Each process draws its own windows (seeded by its rank) and its share of the batch, so
    # another number of processes trains on other data from the resumed step on.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if recorded.get("world_size", world) != world:
        changes.append(f"processes: {recorded['world_size']} -> {world}")
    if changes and not cfg.resume_force:
        raise ValueError(
            f"--resume: {recorded['path']} was trained with other options: "
            + "; ".join(changes)
            + ". Pass the checkpoint's values to continue that run, or --resume-force to "
            "continue it with the new ones (from the resumed step on)"
        )
    checkpoint.check_tokenizer(recorded, cfg.tokenizer)
    return recorded, changes


def config_changes(recorded: dict, current: dict, defaults: dict, allowed: set[str]) -> list[str]:
    """``"field: old -> new"`` for each field of the ``current`` training config (a JSON-like
    dict; nested dicts are compared field by field, as ``outer.inner``) whose value differs from
    the ``recorded`` one, except those named in ``allowed``. A field missing from ``recorded``
    (added since) counts as having had its value in ``defaults``."""
    changes = []
    for key, new in current.items():
        if key in allowed:
            continue
        old = recorded.get(key, defaults.get(key))
        if isinstance(new, dict):
            sub_allowed = {a.split(".", 1)[1] for a in allowed if a.startswith(f"{key}.")}
            sub = config_changes(old if isinstance(old, dict) else {}, new,
                                 defaults.get(key) or {}, sub_allowed)  # fmt: skip
            changes += [f"{key}.{c}" for c in sub]
        elif old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


def load_train_state(path: str | Path) -> dict[str, Any]:
    """``{"step", "optimizer"?, "scheduler"?}`` of a checkpoint (weights_only load); older
    checkpoints also hold an ``"rng"`` entry, which no resume reads."""
    path = checkpoint.resolve_checkpoint(path)
    file = path / checkpoint.STATE_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{path} has no {checkpoint.STATE_FILE}; it cannot be resumed (only --init)"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{file} is not a readable training state: {e}") from e


def restore_train_state(
    path: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    lr_factor: Callable[[int], float],
) -> int:
    """Load a checkpoint's optimizer and scheduler states (cut to this process's shards when the
    parameters are sharded, training/sharding.py); return its step.

    The moments and step counts are the checkpoint's; the hyperparameters and the schedule
    (`lr_factor(step)` times the peak) this run's: the same unless --resume-force, or a longer
    `steps` reshaping the decay."""
    state = load_train_state(path)
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(shard_optimizer_state(optimizer, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    step = int(state["step"])
    for group, h in zip(optimizer.param_groups, hyper, strict=True):
        group.update(h)
        group["lr"] = group["initial_lr"] * lr_factor(step)
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    return step


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints (`step_*`) of a run folder."""
    steps = sorted(p for p in out_dir.glob("step_*") if p.is_dir())
    for p in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(p, ignore_errors=True)
