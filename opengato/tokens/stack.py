"""`SeqStack`: B token streams of equal length, stacked row by row (shorter ones left-padded).

What a policy lane has appended but not yet fed to the model (agent/policy.py). It is the
vectorised counterpart of a list of B `TokenSeq`s: appending a step's tokens, or one action
token, is one numpy operation for the whole lane instead of one per environment, which is what
bounds acting for hundreds of environments at once (benchmarks/RESULTS.md, "On one H100").
Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opengato.kinds import Kind
from opengato.tokens.seq import Rows, TokenSeq

TOKEN_FIELDS = ("ids", "kind", "obs_pos", "target_mask", "starts")
"""SeqStack's per-token (B, T) arrays, in field order."""


@dataclass
class SeqStack:
    """ids int32 (B, T); kind uint8 (B, T); obs_pos int16 (B, T); target_mask bool (B, T);
    starts bool (B, T): a timestep starts at that token; patches uint8 (Np, p, p, 3) and
    patch_pos uint8 (Np, 4) of the IMAGE tokens, row by row, each row's in stream order;
    `lead` int64 (B,) or None: row r starts with lead[r] pad tokens (id 0, Kind.PAD, never a
    target: a ragged KV cache writes them where no real token reads them, model/kv_cache.py)."""

    ids: np.ndarray
    kind: np.ndarray
    obs_pos: np.ndarray
    target_mask: np.ndarray
    starts: np.ndarray
    patches: np.ndarray
    patch_pos: np.ndarray
    lead: np.ndarray | None = None

    def __len__(self) -> int:
        return self.ids.shape[1]

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    def leads(self) -> np.ndarray:
        """int64 (B,): each row's leading pad tokens (zeros when there are none)."""
        return np.zeros(self.rows, np.int64) if self.lead is None else self.lead

    def lengths(self) -> np.ndarray:
        """int64 (B,): each row's tokens, its pads left out."""
        return len(self) - self.leads()

    @staticmethod
    def empty(rows: int, patch_size: int = 16) -> SeqStack:
        """`rows` streams of no tokens."""
        z = np.zeros((rows, 0))
        return SeqStack(z.astype(np.int32), z.astype(np.uint8), z.astype(np.int16),
                        z.astype(bool), z.astype(bool),
                        np.zeros((0, patch_size, patch_size, 3), np.uint8),
                        np.zeros((0, 4), np.uint8))  # fmt: skip

    @staticmethod
    def of(seqs: list[TokenSeq]) -> SeqStack:
        """The TokenSeqs (equal lengths) stacked."""
        if len({len(s) for s in seqs}) != 1:
            raise ValueError(f"SeqStack needs equal lengths, got {[len(s) for s in seqs]}")
        starts = np.zeros((len(seqs), len(seqs[0])), bool)
        for r, s in enumerate(seqs):
            starts[r, s.timestep_starts] = True
        return SeqStack(
            np.stack([s.ids for s in seqs]).astype(np.int32, copy=False),
            np.stack([s.kind for s in seqs]),
            np.stack([s.obs_pos for s in seqs]),
            np.stack([s.target_mask for s in seqs]),
            starts,
            np.concatenate([s.patches for s in seqs]),
            np.concatenate([s.patch_pos for s in seqs]),
        )

    @staticmethod
    def padded(seqs: list[TokenSeq]) -> SeqStack:
        """The TokenSeqs stacked, the shorter ones left-padded to the longest (`lead`)."""
        if len({len(s) for s in seqs}) == 1:
            return SeqStack.of(seqs)
        return SeqStack.merged([(SeqStack.of([s]), [r]) for r, s in enumerate(seqs)])

    @staticmethod
    def merged(parts: list[tuple[SeqStack, list[int]]]) -> SeqStack:
        """Stacks (each of one length, no lead) as one: part (stack, positions) puts the stack's
        rows at those rows of the result, the shorter parts left-padded to the longest (`lead`);
        a part at a time, not a row (`padded` is its parts of one row each)."""
        B, T = sum(len(pos) for _, pos in parts), max(len(s) for s, _ in parts)
        out = SeqStack(np.zeros((B, T), np.int32), np.full((B, T), Kind.PAD, np.uint8),
                       np.full((B, T), -1, np.int16), np.zeros((B, T), bool),
                       np.zeros((B, T), bool), None, None, np.zeros(B, np.int64))  # fmt: skip
        patches, patch_pos = [None] * B, [None] * B  # each row's, in result order
        imaged = any(len(stack.patches) for stack, _ in parts)
        for stack, pos in parts:
            n = T - len(stack)
            for f in TOKEN_FIELDS:
                getattr(out, f)[pos, n:] = getattr(stack, f)
            out.lead[pos] = n
            if imaged:  # else no per-row work (BabyAI's 640 rows a step have no patches)
                for r, sl in zip(pos, stack._patch_rows(), strict=True):
                    patches[r], patch_pos[r] = stack.patches[sl], stack.patch_pos[sl]
        first = parts[0][0]
        out.patches = np.concatenate(patches) if imaged else first.patches[:0]
        out.patch_pos = np.concatenate(patch_pos) if imaged else first.patch_pos[:0]
        out.lead = out.lead if out.lead.any() else None
        return out

    @staticmethod
    def from_rows(rows: Rows) -> SeqStack:
        """Laid-out timesteps of one layout (tokens/seq.py), a timestep per row: the same as
        `of` over `flatten_rows` of each row, without splitting them first."""
        B, n = rows.ids.shape
        starts = np.zeros((B, n), bool)
        starts[:, :1] = True
        return SeqStack(
            rows.ids.astype(np.int32, copy=False),
            np.broadcast_to(rows.kind, (B, n)).copy(),
            np.broadcast_to(rows.obs_pos, (B, n)).copy(),
            np.broadcast_to(rows.target_mask, (B, n)).copy(),
            starts,
            rows.patches.reshape(-1, *rows.patches.shape[2:]),
            np.tile(rows.patch_pos, (B, 1)),
        )

    @staticmethod
    def column(ids: np.ndarray, kind, target: bool = True,
               present: np.ndarray | None = None) -> SeqStack:  # fmt: skip
        """One token a row, `ids` (B,), outside any observation (an action token: a target), of
        `kind` (one, or one a row); rows where `present` (bool (B,)) is False hold a pad instead
        (`lead`: a policy's envs whose action has no token left)."""
        B = len(ids)
        kinds = np.broadcast_to(np.asarray(kind, np.uint8), (B,))
        targets = np.full(B, target, bool)
        lead = None
        if present is not None and not present.all():
            ids, kinds = np.where(present, ids, 0), np.where(present, kinds, Kind.PAD)
            targets, lead = targets & present, (~present).astype(np.int64)
        return SeqStack(
            ids.astype(np.int32).reshape(B, 1),
            kinds.astype(np.uint8).reshape(B, 1),
            np.full((B, 1), -1, np.int16),
            targets.reshape(B, 1),
            np.zeros((B, 1), bool),
            np.zeros((0, 16, 16, 3), np.uint8),
            np.zeros((0, 4), np.uint8),
            lead,
        )

    def _patch_rows(self) -> list[slice]:
        ends = np.cumsum(np.count_nonzero(self.kind == Kind.IMAGE, axis=1))
        return [slice(int(a), int(b)) for a, b in zip(np.r_[0, ends[:-1]], ends, strict=True)]

    def append(self, other: SeqStack) -> SeqStack:
        """Each row of `other` after the same row of this stack."""
        if other.rows != self.rows:
            raise ValueError(f"cannot append {other.rows} rows to {self.rows}")
        if len(other) == 0:
            return self
        if len(self) == 0:
            return other
        patches, patch_pos = self.patches, self.patch_pos
        if len(self.patches) and len(other.patches):  # interleave: row r's, then row r's new
            parts = [(src, sl) for a, b in zip(self._patch_rows(), other._patch_rows(), strict=True)
                     for src, sl in ((self, a), (other, b))]  # fmt: skip
            patches = np.concatenate([s.patches[sl] for s, sl in parts])
            patch_pos = np.concatenate([s.patch_pos[sl] for s, sl in parts])
        elif len(other.patches):
            patches, patch_pos = other.patches, other.patch_pos
        cat = lambda f: np.concatenate([getattr(self, f), getattr(other, f)], axis=1)  # noqa: E731
        fields = [cat(f) for f in TOKEN_FIELDS]
        if self.lead is None and other.lead is None:
            return SeqStack(*fields, patches, patch_pos)
        # Ragged: row r is [its pads and other's, its tokens, other's tokens], taken from the
        # concatenation: column c < pads is a pad, then this stack's tokens, then other's.
        a = len(self)
        la, lb = self.leads(), other.leads()
        c = np.arange(a + len(other))[None, :]
        pads = c < (la + lb)[:, None]
        src = np.where(c < (a + lb)[:, None], np.maximum(c - lb[:, None], 0), c)
        src += (np.arange(len(src)) * src.shape[1])[:, None]  # flat: one index for all fields
        out = [np.take(x, src) for x in fields]  # (take_along_axis rebuilt it per field, 4x)
        for x, v in zip(out, (0, Kind.PAD, -1, False, False), strict=True):
            x[pads] = v
        return SeqStack(*out, patches, patch_pos, la + lb)

    def select(self, rows: list[int]) -> SeqStack:
        """These rows, in this order."""
        if len(self.patches):
            sl = self._patch_rows()
            patches = np.concatenate([self.patches[sl[r]] for r in rows])
            patch_pos = np.concatenate([self.patch_pos[sl[r]] for r in rows])
        else:
            patches, patch_pos = self.patches, self.patch_pos
        lead = None if self.lead is None else self.lead[rows]
        return SeqStack(self.ids[rows], self.kind[rows], self.obs_pos[rows],
                        self.target_mask[rows], self.starts[rows], patches, patch_pos,
                        lead)  # fmt: skip

    def unpadded(self) -> SeqStack:
        """This stack without the pad columns all its rows start with (but one, when every
        row is pads only: a forward needs a token a row)."""
        m = 0 if self.lead is None else min(int(self.lead.min()), len(self) - 1)
        if m == 0:
            return self
        cut = [getattr(self, f)[:, m:] for f in TOKEN_FIELDS]
        lead = self.lead - m
        return SeqStack(*cut, self.patches, self.patch_pos, lead if lead.any() else None)

    def seqs(self) -> list[TokenSeq]:
        """One TokenSeq per row (its pads left out)."""
        sl = self._patch_rows()
        n = self.leads()
        return [
            TokenSeq(
                ids=self.ids[r, n[r] :],
                kind=self.kind[r, n[r] :],
                obs_pos=self.obs_pos[r, n[r] :],
                target_mask=self.target_mask[r, n[r] :],
                timestep_starts=np.flatnonzero(self.starts[r, n[r] :]).astype(np.int64),
                patches=self.patches[sl[r]],
                patch_pos=self.patch_pos[sl[r]],
            )  # fmt: skip
            for r in range(self.rows)
        ]


__all__ = ["SeqStack"]
