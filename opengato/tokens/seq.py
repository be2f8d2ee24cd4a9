"""The token stream: `TokenSeq`, and how the tokens of a space's leaves are laid out into
timesteps (docs/design.md, "TokenSeq").

A timestep is its observation's tokens (text first, then image patches, then the other leaves
in walk order), then, when it has an action, the separator and the action's tokens. The
tokenizer encodes each leaf for a whole batch of timesteps at once (a `Block`), and
:func:`lay_out_timesteps` interleaves those blocks row by row; :func:`leaf_slices` finds each
leaf's tokens again in a decoded stream; `tail`, `head_timesteps` and `tail_timesteps` cut a
stream (prompts and windows), `text_seq` makes one of text. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from gymnasium import spaces

from opengato.kinds import Kind
from opengato.tokens import spaces as walk
from opengato.tokens.codecs import TokenizeError, leaf_kind


@dataclass
class TokenSeq:
    """A flat token stream: parallel arrays of length N, plus image patches stored apart.

    ids: int32[N]; kind: uint8[N] (Kind); obs_pos: int16[N] (local observation position, -1 for
    non-observation tokens); target_mask: bool[N] (text and action tokens); timestep_starts: int64[S];
    patches: uint8[P, p, p, 3] raw pixels of the IMAGE tokens in stream order; patch_pos:
    uint8[P, 4] half-open (row_lo, row_hi, col_lo, col_hi) in [0, position_vocab].
    """

    ids: np.ndarray
    kind: np.ndarray
    obs_pos: np.ndarray
    target_mask: np.ndarray
    timestep_starts: np.ndarray
    patches: np.ndarray = field(default_factory=lambda: np.zeros((0, 16, 16, 3), np.uint8))
    patch_pos: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.uint8))

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def concat(seqs: list[TokenSeq]) -> TokenSeq:
        """Join streams end to end (timestep starts are shifted, patches follow the tokens)."""
        if not seqs:
            raise ValueError("TokenSeq.concat needs at least one sequence")
        offsets = np.cumsum([0] + [len(s) for s in seqs[:-1]])
        return TokenSeq(
            ids=np.concatenate([s.ids for s in seqs]),
            kind=np.concatenate([s.kind for s in seqs]),
            obs_pos=np.concatenate([s.obs_pos for s in seqs]),
            target_mask=np.concatenate([s.target_mask for s in seqs]),
            timestep_starts=np.concatenate(
                [s.timestep_starts + o for s, o in zip(seqs, offsets, strict=True)]
            ),
            patches=np.concatenate([s.patches for s in seqs]),
            patch_pos=np.concatenate([s.patch_pos for s in seqs]),
        )


def stream_rank(kind: Kind) -> int:
    """Where a leaf's tokens go within an observation: text (0), then images (1), then the
    rest (2); leaves of one rank keep their walk order."""
    return {Kind.TEXT: 0, Kind.IMAGE: 1}.get(kind, 2)


@dataclass
class Block:
    """Tokens of one leaf of a space for a batch of B values: ids (B, n), or for text B arrays
    of their own lengths; images add patches (B, n, p, p, 3) uint8 and patch_pos (n, 4) uint8."""

    ids: np.ndarray | list[np.ndarray]
    kind: Kind
    patches: np.ndarray | None = None
    patch_pos: np.ndarray | None = None

    def take(self, rows: list[int]) -> Block:
        """The given rows (text rows of one length, stacked), as a block of fixed-size rows."""
        ids = (
            np.stack([self.ids[t] for t in rows]) if isinstance(self.ids, list) else self.ids[rows]
        )
        patches = None if self.patches is None else self.patches[rows]
        return Block(ids, self.kind, patches, self.patch_pos)


@dataclass
class Rows:
    """B timesteps laid out with the same layout: ids (B, n); kind/obs_pos/target_mask (n,);
    patches (B, P, p, p, 3); patch_pos (P, 4)."""

    ids: np.ndarray
    kind: np.ndarray
    obs_pos: np.ndarray
    target_mask: np.ndarray
    patches: np.ndarray
    patch_pos: np.ndarray

    def row(self, i: int) -> Rows:
        """Row i, as Rows of one row."""
        return Rows(
            self.ids[i : i + 1],
            self.kind,
            self.obs_pos,
            self.target_mask,
            self.patches[i : i + 1],
            self.patch_pos,
        )


def lay_out_timesteps(
    obs_blocks: list[Block], act_blocks: list[Block] | None, separator_id: int, patch_size: int
) -> list[Rows]:
    """Lay out B timesteps: the observation (text, then images, then tensors), then, when
    actions are given, the separator and the action tokens. Fixed-size observations give one
    `Rows` of B rows; observations with text (ragged) give B `Rows` of one row each, in order."""
    groups = lay_out_groups(obs_blocks, act_blocks, separator_id, patch_size)
    if not _ragged(obs_blocks):
        return [groups[0][1]]
    out: list[Rows] = [None] * sum(len(rows) for rows, _ in groups)  # type: ignore[list-item]
    for rows, laid in groups:
        for j, t in enumerate(rows):
            out[t] = laid.row(j)
    return out


def lay_out_groups(
    obs_blocks: list[Block], act_blocks: list[Block] | None, separator_id: int, patch_size: int
) -> list[tuple[list[int], Rows]]:
    """`lay_out_timesteps` as (timesteps, their `Rows`) per layout: one for fixed-size
    observations; with text, one per combination of text lengths (a BabyAI episode's mission,
    repeated every step; envs whose missions tokenise to one length), each laid out at once."""
    obs_blocks = sorted(obs_blocks, key=lambda b: stream_rank(b.kind))  # stable
    ragged = _ragged(obs_blocks)
    if not ragged:
        B = obs_blocks[0].ids.shape[0] if obs_blocks else act_blocks[0].ids.shape[0]
        return [(list(range(B)), _lay_out_rows(obs_blocks, act_blocks, separator_id, patch_size))]
    groups: dict[tuple[int, ...], list[int]] = {}
    for t in range(len(ragged[0])):
        groups.setdefault(tuple(len(ids[t]) for ids in ragged), []).append(t)
    return [
        (rows, _lay_out_rows([b.take(rows) for b in obs_blocks],
                             None if act_blocks is None else [b.take(rows) for b in act_blocks],
                             separator_id, patch_size))
        for rows in groups.values()
    ]  # fmt: skip


def _ragged(blocks: list[Block]) -> list[list[np.ndarray]]:
    """The ids of the text blocks (a list of rows of their own lengths each)."""
    return [b.ids for b in blocks if isinstance(b.ids, list)]


def _lay_out_rows(
    obs_blocks: list[Block], act_blocks: list[Block] | None, separator_id: int, patch_size: int
) -> Rows:
    """`lay_out_timesteps` for blocks of fixed-size rows (ids (B, n) each), already in order."""
    B = obs_blocks[0].ids.shape[0] if obs_blocks else act_blocks[0].ids.shape[0]
    ids = [b.ids for b in obs_blocks]
    kind = [np.full(b.ids.shape[1], b.kind, np.uint8) for b in obs_blocks]
    # Observations are never targets, text inside them included (the paper: only text
    # *data* and actions are; training can weight them back in with LossWeights).
    mask = [np.zeros(b.ids.shape[1], bool) for b in obs_blocks]
    n_obs = sum(i.shape[1] for i in ids)
    pos = [np.arange(n_obs, dtype=np.int16)]
    if act_blocks is not None:
        n_act = sum(b.ids.shape[1] for b in act_blocks)
        ids += [np.full((B, 1), separator_id, np.int32)] + [b.ids for b in act_blocks]
        kind += [np.array([Kind.SEPARATOR], np.uint8)]
        kind += [np.full(b.ids.shape[1], b.kind, np.uint8) for b in act_blocks]
        mask += [np.zeros(1, bool), np.ones(n_act, bool)]
        pos += [np.full(1 + n_act, -1, np.int16)]
    img = [b for b in obs_blocks if b.kind == Kind.IMAGE]
    p = patch_size
    return Rows(
        ids=np.concatenate(ids, axis=1).astype(np.int32),
        kind=np.concatenate(kind),
        obs_pos=np.concatenate(pos),
        target_mask=np.concatenate(mask),
        patches=np.concatenate([b.patches for b in img], 1)
        if img
        else np.zeros((B, 0, p, p, 3), np.uint8),
        patch_pos=np.concatenate([b.patch_pos for b in img]) if img else np.zeros((0, 4), np.uint8),
    )


def flatten_rows(rows: list[Rows]) -> TokenSeq:
    """All rows of all `Rows` end to end, one timestep per row."""
    ids = np.concatenate([r.ids.reshape(-1) for r in rows])
    lengths = np.concatenate([np.full(r.ids.shape[0], r.ids.shape[1]) for r in rows])
    return TokenSeq(
        ids=ids,
        kind=np.concatenate([np.tile(r.kind, r.ids.shape[0]) for r in rows]),
        obs_pos=np.concatenate([np.tile(r.obs_pos, r.ids.shape[0]) for r in rows]),
        target_mask=np.concatenate([np.tile(r.target_mask, r.ids.shape[0]) for r in rows]),
        timestep_starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        patches=np.concatenate([r.patches.reshape(-1, *r.patches.shape[2:]) for r in rows]),
        patch_pos=np.concatenate([np.tile(r.patch_pos, (r.ids.shape[0], 1)) for r in rows]),
    )


def leaf_slices(
    space: spaces.Space, n_tokens: int, path: str
) -> list[tuple[walk.Leaf, Kind, slice]]:
    """Each leaf of ``space``, its kind and the slice of a stream of ``n_tokens`` ids holding its
    tokens, in stream order (text first, see `stream_rank`). The one Text leaf allowed holds what
    the fixed-size leaves leave over; images are patches, not ids, and cannot be decoded."""
    leaves = walk.leaves(space, path)
    kinds = [leaf_kind(leaf.space, leaf.path) for leaf in leaves]
    for leaf, kind in zip(leaves, kinds, strict=True):
        if kind == Kind.IMAGE:
            raise TokenizeError(
                f"{leaf.path}: image leaves are patches, not tokens, and cannot be decoded"
            )
    sizes = [
        0 if kind == Kind.TEXT else int(np.prod(leaf.space.shape))
        for leaf, kind in zip(leaves, kinds, strict=True)
    ]
    n_fixed = sum(sizes)
    n_text = n_tokens - n_fixed
    if kinds.count(Kind.TEXT) > 1:
        raise TokenizeError(f"{path}: cannot split the tokens of more than one Text leaf")
    if n_text < 0 or (n_text != 0 and Kind.TEXT not in kinds):
        raise TokenizeError(f"{path}: got {n_tokens} tokens, {space} needs {n_fixed}")
    slices, start = [], 0
    for leaf, kind, n in sorted(
        zip(leaves, kinds, sizes, strict=True), key=lambda lkn: stream_rank(lkn[1])
    ):
        n = n_text if kind == Kind.TEXT else n
        slices.append((leaf, kind, slice(start, start + n)))
        start += n
    return slices


# --------------------------------------------------------------------------- cutting streams


def empty_seq() -> TokenSeq:
    """A TokenSeq of no tokens."""
    return TokenSeq(
        ids=np.zeros(0, np.int32),
        kind=np.zeros(0, np.uint8),
        obs_pos=np.zeros(0, np.int16),
        target_mask=np.zeros(0, bool),
        timestep_starts=np.zeros(0, np.int64),
    )


def tail(seq: TokenSeq, n: int) -> TokenSeq:
    """The last `n` tokens of `seq` (all of it if shorter), with the patches they own."""
    drop = max(0, len(seq) - n)
    if drop == 0:
        return seq
    n_img_dropped = int(np.count_nonzero(seq.kind[:drop] == Kind.IMAGE))
    starts = seq.timestep_starts[seq.timestep_starts >= drop] - drop
    return TokenSeq(
        ids=seq.ids[drop:],
        kind=seq.kind[drop:],
        obs_pos=seq.obs_pos[drop:],
        target_mask=seq.target_mask[drop:],
        timestep_starts=starts,
        patches=seq.patches[n_img_dropped:],
        patch_pos=seq.patch_pos[n_img_dropped:],
    )


def head_timesteps(seq: TokenSeq, n: int) -> TokenSeq:
    """The longest prefix of `seq` of at most `n` tokens that ends on a timestep boundary (so
    a prompt never ends inside an observation); empty if no boundary fits (a first timestep
    longer than `n`: training gives such a window no prompt either)."""
    if len(seq) <= n:
        return seq
    bounds = seq.timestep_starts[(seq.timestep_starts > 0) & (seq.timestep_starts <= n)]
    cut = int(bounds[-1]) if len(bounds) else 0
    n_img = int(np.count_nonzero(seq.kind[:cut] == Kind.IMAGE))
    return TokenSeq(
        ids=seq.ids[:cut],
        kind=seq.kind[:cut],
        obs_pos=seq.obs_pos[:cut],
        target_mask=seq.target_mask[:cut],
        timestep_starts=seq.timestep_starts[seq.timestep_starts < cut],
        patches=seq.patches[:n_img],
        patch_pos=seq.patch_pos[:n_img],
    )


def tail_timesteps(seq: TokenSeq, n: int) -> TokenSeq:
    """The longest suffix of `seq` of at most `n` tokens that starts on a timestep boundary
    (the episode's end, as training's goal-conditioning prompts); empty if no boundary fits (a
    last timestep longer than `n`: training gives such a window no prompt either)."""
    if len(seq) <= n:
        return seq
    bounds = seq.timestep_starts[seq.timestep_starts >= len(seq) - n]
    keep = len(seq) - int(bounds[0]) if len(bounds) else 0
    return tail(seq, keep)


def text_seq(ids: np.ndarray) -> TokenSeq:
    """Plain text tokens (targets, no observation position) as a TokenSeq."""
    return TokenSeq(
        ids=ids.astype(np.int32),
        kind=np.full(len(ids), Kind.TEXT, np.uint8),
        obs_pos=np.full(len(ids), -1, np.int16),
        target_mask=np.ones(len(ids), bool),
        timestep_starts=np.zeros(1, np.int64),
    )
