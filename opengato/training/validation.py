"""Validation loss on the held-out episodes of each dataset, per domain and on action tokens;
early stopping on it."""

from __future__ import annotations

import math

import numpy as np
import torch

from opengato.batches.batch import action_tokens
from opengato.batches.mixture import Mixture
from opengato.batches.shards import Shard
from opengato.batches.windows import Split
from opengato.model.gato import Gato
from opengato.training.config import TrainConfig
from opengato.training.distributed import Processes, autocast, mean_over_processes


def validation_sets(shards: list[Shard], cfg: TrainConfig, pad_id: int) -> list[Mixture]:
    """One mixture per dataset that has held-out episodes: its `val` split, windows without
    prompts or packing, targets weighted by `cfg.loss_weights` as in training."""
    split = Split("val", cfg.val_fraction)
    return [
        Mixture([s], cfg.context_len, None, split, 0.0, pad_id=pad_id,
                loss_weights=cfg.loss_weights)
        for s in shards
        if split.episode_range(s)[1] > split.episode_range(s)[0]
    ]  # fmt: skip


@torch.no_grad()
def validation_loss(
    model: Gato, val_sets: list[Mixture], cfg: TrainConfig, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Validation loss per domain (`val/<domain>/loss`: the unweighted mean over the tokens
    that are targets under `cfg.loss_weights`), on action tokens only (`val/<domain>/action_loss`),
    and overall (`val/loss`, `val/action_loss`).

    Each dataset's batches are drawn from a fixed generator, so every validation sees the same
    held-out windows."""
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}  # key -> [loss sum, count]
    for i, mixture in enumerate(val_sets):
        rng = np.random.default_rng([cfg.seed, 0x5EED, i])
        for _ in range(cfg.eval_batches):
            batch, windows = mixture.sample_batch(rng, batch_size)
            batch = batch.to(device)
            with autocast(device, cfg.dtype):
                _, per_token = model(batch, reduction="none")  # (B, T), 0 where no target
            counted = batch.target_mask()  # (B, T)
            action = counted & action_tokens(batch.kind, batch.obs_pos)
            domain = windows[0].domain
            for key, mask in (("loss", counted), ("action_loss", action)):
                n = int(mask.sum())
                if n:
                    for k in (f"val/{domain}/{key}", f"val/{key}"):
                        acc = sums.setdefault(k, [0.0, 0])
                        acc[0] += float(per_token[mask].sum())
                        acc[1] += n
    model.train(was_training)
    return {k: s / n for k, (s, n) in sums.items()}


class EarlyStop:
    """Early stopping (`--early-stop N`): tracks the best validation action loss (`val/loss` when
    no dataset has actions) and says when N validations in a row have not improved on it.

    Only the main process computes validation losses; it decides, and the others follow, so
    that every process saves and stops at the same step."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best, self.best_step, self.stale = math.inf, None, 0
        self.improved = self.stop = False

    def update(self, step: int, val: dict[str, float], procs: Processes) -> EarlyStop:
        """Record the validation of `step`: `improved` (the best so far: the step to save) and
        `stop` (`patience` validations in a row without improving) say what to do."""
        loss = val.get("val/action_loss", val.get("val/loss", math.inf))
        mine = float(loss < self.best) if procs.is_main else 0.0
        self.improved = mean_over_processes(mine, procs) > 0
        if self.improved:
            self.best, self.best_step, self.stale = loss, step, 0
        else:
            self.stale += 1
        self.stop = self.stale >= self.patience
        return self

    def summary(self, stopped_at: int | None) -> dict:
        """What the run's summary records: the best step and loss, and where it stopped."""
        return {"patience": self.patience, "best_step": self.best_step,
                "best_val_action_loss": self.best, "stopped_at": stopped_at}  # fmt: skip
