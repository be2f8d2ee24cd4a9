"""The model's input: GatoBatch, one batch of token streams with their image patches
(docs/design.md, "Model input contract")."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from opengato.kinds import Kind


@dataclass
class GatoBatch:
    """The model's input (docs/design.md, "Model input contract")."""

    ids: Tensor
    """long (B, T) token ids; image tokens hold pad_id, their content is in `patches`."""
    kind: Tensor
    """long (B, T) `Kind` of each token."""
    obs_pos: Tensor
    """long (B, T) local observation position, -1 for non-observation tokens."""
    target_weight: Tensor | None
    """float (B, T) weight of each token as a next-token target, 0 where it is none (the
    paper: 1 for text data and actions, 0 elsewhere; `batches.batch.LossWeights`); None at
    inference."""
    patches: Tensor
    """float (Np, 3, 16, 16) normalised image patches in stream order (Np may be 0)."""
    patch_index: Tensor
    """long (Np,) flat index into B*T of each patch's token."""
    patch_pos: Tensor
    """long (Np, 4) (row_lo, row_hi, col_lo, col_hi), half-open intervals in [0, position_vocab]."""
    target_index: Tensor | None = None
    """long (N,) flat index into B*T of the tokens `target_mask()` counts, row by row, found on
    the host when the batch is built (`batches.batch.make_batch`): selecting the loss's positions
    by a boolean mask on a GPU waits for the device every step, and breaks a compiled graph.
    None: the forward finds them from the mask. It follows `target_weight` and `kind`: a copy
    that changes either must set it to None (`dataclasses.replace(b, ..., target_index=None)`)."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GatoBatch:
        """A copy of the batch on `device`."""
        moved = {}
        for f in fields(self):
            t = getattr(self, f.name)
            moved[f.name] = None if t is None else t.to(device, non_blocking=non_blocking)
        return GatoBatch(**moved)

    def target_mask(self) -> Tensor:
        """bool (B, T): True where ids[:, t] counts as a target (predicted from position t-1):
        `target_weight` > 0, but never at position 0 (nothing predicts it) and never on padding,
        whatever `target_weight` says. The one definition the loss and validation share."""
        mask = (self.target_weight > 0) & (self.kind != Kind.PAD)
        mask[:, 0] = False
        return mask

    def with_target_index(self) -> GatoBatch:
        """This batch with `target_index` found from `target_mask()` (None at inference). Call it
        where the tensors are on the host: on a GPU it waits for the device."""
        if self.target_weight is None:
            return self
        index = self.target_mask().flatten().nonzero().squeeze(1)  # (N,)
        return replace(self, target_index=index)
