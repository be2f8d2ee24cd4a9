"""Token streams -> the model's input: one ``make_batch`` for training windows and for the
policy's streams, and the weight of each token as a target (``LossWeights``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from opengato.kinds import Kind
from opengato.model.inputs import GatoBatch
from opengato.tokens.codecs import normalize_patches
from opengato.tokens.seq import TokenSeq
from opengato.tokens.stack import SeqStack

if TYPE_CHECKING:
    from opengato.batches.windows import Window

Array = TypeVar("Array", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class LossWeights:
    """How much each role of token counts as a next-token target. The defaults are the paper's
    mask: text *data* and actions are targets; observations (text inside them included, such as
    a BabyAI mission) never are. Prompts, image patches, separators and padding never count."""

    action: float = 1.0
    """Action tokens."""
    text: float = 1.0
    """Text data: documents, captions, answers (questions are conditioning, never targets)."""
    observation: float = 0.0
    """Observation tokens with an id (text, discrete and continuous values; not image patches).
    The paper: 0. A departure from the paper when > 0."""
    per_window: bool = False
    """Each window's targets weigh 1 in all (their weights divided by their sum), so a dataset's
    share of the loss is its share of the windows (`--weights`). The paper (False): every target
    weighs the same, so a dataset of dense targets (text: every token) outweighs one of sparse
    targets (BabyAI: one action token in ~150). A departure from the paper when True."""

    def __post_init__(self) -> None:
        for name in ("action", "text", "observation"):
            if not (getattr(self, name) >= 0.0 and np.isfinite(getattr(self, name))):
                raise ValueError(
                    f"loss weight {name} must be finite and >= 0, got {getattr(self, name)}"
                )


def action_tokens(kind: Array, obs_pos: Array) -> Array:
    """Which tokens are actions: discrete or continuous values outside observations (numpy
    arrays or torch tensors of any shape)."""
    return ((kind == Kind.DISCRETE) | (kind == Kind.CONTINUOUS)) & (obs_pos < 0)


def target_weights(windows: Sequence[Window], weights: LossWeights) -> np.ndarray:
    """float32 (B, T): the weight of each token of B windows as a target (0: not a target).

    A window's ``target_mask`` is the tokenizer's (text data and actions, cleared in prompts);
    the observation role comes from ``obs_pos`` and the kind, so its weight can be changed
    without re-tokenising. With ``weights.per_window`` each row sums to 1 (or 0)."""
    kind = np.stack([w.kind for w in windows])  # (B, T)
    obs_pos = np.stack([w.obs_pos for w in windows])
    target_mask = np.stack([w.target_mask for w in windows])
    prompt_len = np.array([w.prompt_len for w in windows])  # (B,)
    action = target_mask & action_tokens(kind, obs_pos)
    text = target_mask & (obs_pos < 0) & (kind == Kind.TEXT)
    in_prompt = np.arange(kind.shape[1]) < prompt_len[:, None]  # (B, T)
    observation = (obs_pos >= 0) & (kind != Kind.IMAGE) & (kind != Kind.PAD) & ~in_prompt
    w = weights.action * action + weights.text * text + weights.observation * observation
    w = w.astype(np.float32)
    if weights.per_window:
        w[:, 0] = 0.0  # nothing predicts a window's first token (`GatoBatch.target_mask`)
        total = w.sum(axis=1, keepdims=True)
        w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    return w


def make_batch(
    seqs: Sequence[TokenSeq] | Sequence[Window] | SeqStack, target_weight: np.ndarray | None = None
) -> GatoBatch:
    """B token streams of equal length T (TokenSeqs or Windows, or a SeqStack) -> a
    ``GatoBatch``.

    ids/kind/obs_pos long (B, T); patches float (Np, 3, p, p) normalised, in stream order;
    patch_index long (Np,) flat into B*T (the IMAGE tokens, row by row); patch_pos long (Np, 4);
    ``target_weight`` float32 (B, T) as given (e.g. :func:`target_weights`), None at inference;
    with it, ``target_index`` long (N,) of the counted targets, found here on the host so that a
    training step on a GPU never waits for the device to find them."""
    if isinstance(seqs, SeqStack):  # already stacked (a policy lane's pending tokens)
        ids, kind, obs_pos = (getattr(seqs, f).astype(np.int64) for f in ("ids", "kind", "obs_pos"))
        patches, patch_pos = seqs.patches, seqs.patch_pos
    else:
        T = len(seqs[0].ids)
        if any(len(s.ids) != T for s in seqs):
            raise ValueError(f"make_batch needs equal lengths, got {[len(s.ids) for s in seqs]}")
        ids, kind, obs_pos = (np.stack([getattr(s, f) for s in seqs]).astype(np.int64)
                              for f in ("ids", "kind", "obs_pos"))  # fmt: skip
        patches = np.concatenate([s.patches for s in seqs])
        patch_pos = np.concatenate([s.patch_pos for s in seqs])
    patch_index = np.flatnonzero(kind == Kind.IMAGE)  # (Np,), row-major: the patches' order
    if len(patches) != len(patch_index):
        raise ValueError(f"{len(patches)} image patches for {len(patch_index)} IMAGE tokens")
    return GatoBatch(
        ids=torch.from_numpy(ids),
        kind=torch.from_numpy(kind),
        obs_pos=torch.from_numpy(obs_pos),
        target_weight=None if target_weight is None else torch.from_numpy(target_weight),
        patches=torch.from_numpy(normalize_patches(patches)),
        patch_index=torch.from_numpy(patch_index),
        patch_pos=torch.from_numpy(patch_pos.astype(np.int64)),
    ).with_target_index()
