"""The KV cache: keys and values of the tokens seen so far, for incremental decoding (acting and
text generation), so that each new token attends to the past without recomputing it."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of the tokens seen so far, for incremental decoding.

    Preallocated (n_layer, B, H, capacity, D) buffers, allocated on first use in the compute dtype
    (so it follows autocast); `length` entries are filled. `start` is the absolute position of
    entry 0: it grows when the cache is cropped, so RoPE positions keep increasing and relative
    distances between retained keys and new queries stay right.
    """

    def __init__(self, n_layer: int, capacity: int):
        self.n_layer, self.capacity = n_layer, capacity
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0
        self.start = 0

    @property
    def pos(self) -> int:
        """Absolute position of the next token."""
        return self.start + self.length

    def reset(self) -> None:
        """Forget everything (the buffers are kept)."""
        self.length = self.start = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one layer's new keys/values (B, H, T, D); return all (B, H, length+T, D)."""
        B, H, T, D = k.shape
        if self.k is None or self.k.shape[1:3] != (B, H) or self.k.dtype != k.dtype:
            if self.length:
                raise RuntimeError("KV cache used with a new batch size or dtype while not empty")
            shape = (self.n_layer, B, H, self.capacity, D)
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(shape, dtype=k.dtype, device=k.device)
        end = self.length + T
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Mark n more tokens as written (called once per forward, after all layers)."""
        self.length += n

    def select(self, rows: list[int]) -> KVCache:
        """A new cache holding only these batch rows (same length and positions)."""
        out = KVCache(self.n_layer, self.capacity)
        out.length, out.start = self.length, self.start
        if self.k is not None:
            idx = torch.tensor(rows, device=self.k.device)
            out.k, out.v = self.k.index_select(1, idx), self.v.index_select(1, idx)
        return out

    def crop(self, keep_last: int) -> None:
        """Keep only the last `keep_last` tokens.

        With RoPE the retained keys keep their absolute positions, so attention scores to them are
        unchanged. Note this is not identical to recomputing over the retained window: for layers
        above the first, the retained keys/values were computed while the dropped tokens were still
        visible (the usual sliding-window approximation). Re-prefill the window to be exact.
        """
        keep = max(0, min(keep_last, self.length))
        drop = self.length - keep
        if drop and keep and self.k is not None:
            self.k[:, :, :, :keep] = self.k[:, :, :, drop : self.length].clone()
            self.v[:, :, :, :keep] = self.v[:, :, :, drop : self.length].clone()
        self.start += drop
        self.length = keep
