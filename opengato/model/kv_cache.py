"""The KV cache: keys and values of the tokens seen so far, for incremental decoding (acting and
text generation), so that each new token attends to the past without recomputing it.

A ring buffer. The token at absolute position p lives in slot p % capacity, so sliding the window
(`crop`) moves no memory: it only forgets the oldest positions, and new tokens overwrite their
slots. Until the buffer first wraps around, the valid slots are one contiguous run in position
order and attention reads exactly that slice, as a plain (non-ring) cache would; once it has
wrapped, attention reads every slot with a mask of the ones that are visible. Keys carry their
RoPE rotation from when they were written, so the order of slots never matters (only the
summation order inside attention differs from a cache that copies its keys to the front).

A *static* cache (`static=True`, for compiled decoding: model/compiled.py) always has attention
read every slot, with a mask of the visible ones, and writes through an index tensor, so that a
forward's shapes depend only on its batch size and token count, never on the cache's length.
Its buffers start zeroed (a never-written slot is masked, and must not hold a NaN).

A *ragged* cache (`make_ragged`, for a policy lane whose envs' streams differ in length: BabyAI
missions, prompts of different lengths; static or not) keeps a position per batch row. Row r's
token at position p lives in slot 1 + p % capacity of row r, so each row holds exactly its own
last `capacity` tokens, as a cache of its own would. A forward's rows may carry leading pad
tokens (`lead`: how many per row), so that rows of different lengths share one forward; pads are
written to slot 0 (the *pad slot*), which no real token reads. Attention reads slots [0, 1 + the
furthest any row has reached) until some row wraps around, then all (a static one: always all,
so that CUDA graphs can replay its forwards), with a mask per row (B, 1, T, slots read).
The same results as a lane per length, up to rounding: tests/test_model.py, tests/test_policy.py.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class KVCache:
    """Keys and values of the tokens seen so far, for incremental decoding.

    Preallocated (B, H, capacity, D) buffers per layer (capacity + 1 when ragged), allocated on
    first use in the compute dtype (so it follows autocast). The cache holds the `length` tokens at absolute positions
    [start, start + length); RoPE positions keep increasing across crops, so relative distances
    between retained keys and new queries stay right.

    A forward pass calls `begin(T)` once (it places the T new tokens and returns the attention
    mask), `update(layer, k, v)` in every layer, then `advance(T)`.
    """

    def __init__(self, n_layer: int, capacity: int, static: bool = False):
        self.n_layer, self.capacity, self.static = n_layer, capacity, static
        self.k: list[Tensor] = []  # one (B, H, capacity, D) buffer per layer
        self.v: list[Tensor] = []
        self.length = 0
        self.start = 0
        self._write: slice | Tensor = slice(0, 0)  # this forward's slots: a slice, or indices
        self._read = slice(0, 0)  # the slots attention reads this forward
        # Ragged (`make_ragged`): per row, the absolute position of its next token and the first
        # position it still attends to (host arrays: the policy reads them without a device sync);
        # `lead`: leading pad tokens per row of the next forward (`begin` consumes it).
        self.row_pos: np.ndarray | None = None
        self.row_start: np.ndarray | None = None
        self.lead: np.ndarray | None = None
        self._lead = np.zeros(0, np.int64)
        self.query_pos: Tensor | None = None  # (B, T) this forward's positions, pads at 0
        self.view = False  # rows of another cache (`rows`)

    @property
    def ragged(self) -> bool:
        """Whether rows keep positions of their own (`make_ragged`)."""
        return self.row_pos is not None

    def make_ragged(self, rows: int) -> None:
        """Give each of the `rows` batch rows a position of its own (from now on; each row keeps
        the tokens it has). Slots a row has not written are zeroed: attention now reads them,
        masked, and a masked NaN would still spread."""
        if self.ragged:
            return
        if self.k and self.k[0].shape[0] != rows:
            raise ValueError(f"make_ragged({rows}) on a cache of {self.k[0].shape[0]} rows")
        self.row_pos = np.full(rows, self.pos, np.int64)
        self.row_start = np.full(rows, self.start, np.int64)
        if self.k:  # once per lane at most, and only when it turns ragged after its first forward
            written = self.capacity if self.static else min(self.pos, self.capacity)
            C = self.capacity

            def pad(t: Tensor) -> Tensor:  # the pad slot, then position p's slot at 1 + p % C
                z = t.new_zeros((*t.shape[:2], 1 + C - written, t.shape[3]))
                return torch.cat([z[:, :, :1], t[:, :, :written], z[:, :, 1:]], dim=2)

            self.k, self.v = [pad(t) for t in self.k], [pad(t) for t in self.v]

    def row_lengths(self) -> np.ndarray:
        """Tokens each row holds (ragged caches)."""
        return self.row_pos - self.row_start

    @property
    def pos(self) -> int:
        """Absolute position of the next token."""
        return self.start + self.length

    def reset(self) -> None:
        """Forget everything (the buffers are kept)."""
        self.length = self.start = 0
        if self.ragged:
            self.row_pos[:], self.row_start[:] = 0, 0

    def begin(self, T: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        """Place the next T tokens; return the additive attention bias (T, keys read) of this
        forward (0 where a new token may attend, -inf elsewhere), or None when every new token
        sees every key read (a single token over a full or contiguous cache). Ragged caches:
        a mask (B, 1, T, slots read) per row, see `_begin_ragged`."""
        if self.ragged:
            return self._begin_ragged(T, dtype, device)
        if self.length + T > self.capacity:
            raise RuntimeError(
                f"KV cache full ({self.length} + {T} > {self.capacity} tokens): crop() it first"
            )
        C, pos = self.capacity, self.pos
        first = pos % C
        self._write = (
            slice(first, first + T)
            if first + T <= C and not self.static
            else torch.arange(first, first + T, device=device) % C
        )
        end = pos + T
        if end <= C and not self.static:  # never wrapped: slots [start, end) in position order
            self._read = slice(self.start, end)
            if self.length == 0 or T == 1:
                return None  # causal among the new tokens alone (SDPA's is_causal), or nothing
            visible = torch.arange(self.length + T, device=device) <= (
                self.length + torch.arange(T, device=device)[:, None]
            )
        else:  # wrapped: read every slot; slot s holds the latest position congruent to s
            self._read = slice(0, C)
            slot_pos = (end - 1) - ((end - 1 - torch.arange(C, device=device)) % C)  # (C,)
            if T == 1 and self.start <= end - C and not self.static:
                return None  # one query and every slot valid
            query_pos = pos + torch.arange(T, device=device)[:, None]  # (T, 1)
            visible = (slot_pos >= self.start) & (slot_pos <= query_pos)  # (T, C)
        mask = torch.zeros(visible.shape, dtype=dtype, device=device)
        return mask.masked_fill_(~visible, float("-inf"))

    def _begin_ragged(self, T: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """`begin` of a ragged cache. Row r's forward holds `lead[r]` pad tokens, then T - lead[r]
        real ones at positions row_pos[r] on; a real token sees the row's slots whose position
        lies in [row_start[r], its own]; a pad token sees the pad slot (and whatever else: its
        output is never read, it only must not be a softmax over nothing)."""
        lead = np.zeros(len(self.row_pos), np.int64) if self.lead is None else self.lead
        self.lead, self._lead = None, lead
        C, end = self.capacity, self.row_pos + T - lead
        if (self.row_start < end - C).any():
            r = int(np.argmax(self.row_start < end - C))
            raise RuntimeError(f"KV cache row {r} full ({self.row_pos[r] - self.row_start[r]} + "
                               f"{T - lead[r]} > {C} tokens): crop it first")  # fmt: skip
        top = int(end.max())
        # Until a row wraps, its slots are [1, 1 + its end); a static cache reads them all, so
        # that a forward's shapes never depend on how far its rows have come (CUDA graphs)
        L = 1 + (C if self.static else min(C, top))
        self._read = slice(0, L)
        as_t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731  (B,) each
        pos, start, lead_t, end_t = as_t(self.row_pos), as_t(self.row_start), as_t(lead), as_t(end)
        j = torch.arange(T, device=device)
        pad = j < lead_t[:, None]  # (B, T)
        query_pos = pos[:, None] + j - lead_t[:, None]  # (B, T); a pad's is below its row's
        self.query_pos = query_pos.masked_fill(pad, 0)  # for RoPE; a pad's rotation is unread
        self._write = torch.where(pad, 0, 1 + query_pos % C)  # (B, T) slots
        # What each slot read holds after this forward's writes: a position where a real token
        # may see it, else BIG + 1 (no one); the pad slot BIG, seen only by pads (at BIG).
        big = np.iinfo(np.int64).max // 2
        s = torch.arange(L - 1, device=device)  # ring slots 0.. of the L - 1 real ones read
        slot_pos = (end_t[:, None] - 1) - ((end_t[:, None] - 1 - s) % C)  # (B, L - 1)
        slot_pos = slot_pos.masked_fill(slot_pos < start[:, None], big + 1)
        slot_pos = torch.cat([torch.full_like(slot_pos[:, :1], big), slot_pos], dim=1)  # (B, L)
        visible = slot_pos[:, None, :] <= query_pos.masked_fill(pad, big)[:, :, None]  # (B, T, L)
        zero, never = (torch.tensor(x, dtype=dtype, device=device) for x in (0.0, float("-inf")))
        return torch.where(visible, zero, never)[:, None]  # (B, 1, T, L)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one layer's new keys/values (B, H, T, D) in the slots `begin` placed; return the
        keys/values attention reads (B, H, keys, D)."""
        B, H, _, D = k.shape
        self.allocate(B, H, D, k.dtype, k.device)
        if self.ragged:  # a slot per row and token; every slot read, through the mask
            rows = torch.arange(B, device=k.device)[:, None]  # (B, 1)
            self.k[layer][rows, :, self._write] = k.transpose(1, 2)  # (B, T, H, D)
            self.v[layer][rows, :, self._write] = v.transpose(1, 2)
            return self.k[layer][:, :, self._read], self.v[layer][:, :, self._read]
        if isinstance(self._write, slice):
            self.k[layer][:, :, self._write] = k
            self.v[layer][:, :, self._write] = v
        else:  # the new tokens wrap around the end of the buffer, or the cache is static
            self.k[layer].index_copy_(2, self._write, k)
            self.v[layer].index_copy_(2, self._write, v)
        return self.k[layer][:, :, self._read], self.v[layer][:, :, self._read]

    def allocate(self, B: int, H: int, D: int, dtype: torch.dtype, device) -> None:
        """Buffers for batch size B and H heads of size D in `dtype`, unless the cache has them:
        (re)allocated, zeroed when static (an error if the cache holds tokens). `update` calls
        it; compiled decoding calls it before its graph does."""
        if self.k and self.k[0].shape[:2] == (B, H) and self.k[0].dtype == dtype:
            return
        if self.length or (self.ragged and self.row_pos.any()) or self.view:
            raise RuntimeError("KV cache used with a new batch size or dtype while not empty"
                               + (" (a rows() view)" if self.view else ""))  # fmt: skip
        new = torch.zeros if self.static or self.ragged else torch.empty
        shape = (B, H, self.capacity + self.ragged, D)  # + the pad slot of a ragged cache
        self.k = [new(shape, dtype=dtype, device=device) for _ in range(self.n_layer)]
        self.v = [new(shape, dtype=dtype, device=device) for _ in range(self.n_layer)]

    def advance(self, n: int) -> None:
        """Mark n more tokens as written (called once per forward, after all layers); a ragged
        cache's rows advance by their real tokens."""
        self.length += n
        if self.ragged:  # in place: a `rows` view's parent sees it
            self.row_pos += n - self._lead

    def select(self, rows: list[int]) -> KVCache:
        """A new cache holding only these batch rows (same length and positions)."""
        out = KVCache(self.n_layer, self.capacity, self.static)
        out.length, out.start = self.length, self.start
        if self.ragged:
            out.row_pos, out.row_start = self.row_pos[rows], self.row_start[rows]
        if self.k:
            idx = torch.tensor(rows, device=self.k[0].device)
            out.k = [t.index_select(0, idx) for t in self.k]
            out.v = [t.index_select(0, idx) for t in self.v]
        return out

    def keep(self, rows: list[int]) -> list[int]:
        """Keep only these batch rows (ascending), in place. Each dropped row among the first
        len(rows) takes a kept row from beyond them, so a lane whose envs finish one by one
        copies a row per finished env, where `select` copies every row kept (with 640 envs
        ending at scattered steps, 28% of a CPU evaluation's time). Returns the old row that
        each row now holds."""
        n, kept = len(rows), set(rows)
        holes = [r for r in range(n) if r not in kept]
        movers = [r for r in rows if r >= n]  # as many as the holes
        order = list(range(n))
        for h, m in zip(holes, movers, strict=True):
            order[h] = m
        if self.k and holes:
            dst, src = (torch.tensor(x, device=self.k[0].device) for x in (holes, movers))
            for t in (*self.k, *self.v):
                t.index_copy_(0, dst, t.index_select(0, src))
        self.k, self.v = [t[:n] for t in self.k], [t[:n] for t in self.v]
        if self.ragged:
            self.row_pos, self.row_start = self.row_pos[order], self.row_start[order]
        return order

    def crop(self, keep_last: int) -> None:
        """Keep only the last `keep_last` tokens (no memory moves: the ring forgets the oldest).

        With RoPE the retained keys keep their absolute positions, so attention scores to them are
        unchanged. Note this is not identical to recomputing over the retained window: for layers
        above the first, the retained keys/values were computed while the dropped tokens were still
        visible (the usual sliding-window approximation). Re-prefill the window to be exact.
        """
        keep = max(0, min(keep_last, self.length))
        self.start += self.length - keep
        self.length = keep
        if self.ragged:  # every row keeps at most its last keep_last tokens
            self.crop_rows(np.full(len(self.row_pos), keep_last))

    def crop_rows(self, keep_last: np.ndarray) -> None:
        """Ragged caches: row r keeps only its last keep_last[r] tokens."""
        np.maximum(self.row_start, self.row_pos - np.maximum(keep_last, 0), out=self.row_start)

    def rows(self, r0: int, r1: int) -> KVCache:
        """Rows [r0, r1) of this ragged, allocated cache as a cache of their own that shares
        its memory: what a forward writes through it, and its rows' positions and crops, are
        this cache's (a forward over a lane's rows a chunk at a time, agent/policy.py)."""
        if not (self.ragged and self.k):
            raise RuntimeError("rows() needs a ragged cache with its buffers allocated")
        out = KVCache(self.n_layer, self.capacity, self.static)
        out.k, out.v = [t[r0:r1] for t in self.k], [t[r0:r1] for t in self.v]
        out.row_pos, out.row_start = self.row_pos[r0:r1], self.row_start[r0:r1]  # views
        out.view = True  # never reallocated: its buffers are this cache's
        return out
