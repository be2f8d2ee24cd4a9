"""Gato's tokenizer: any Gymnasium observation or action <-> one flat stream of tokens.

Pure numpy, no torch. Every function maps ``(space, value) -> tokens`` or back, with no hidden
state beyond the frozen config and the SentencePiece model it names. See docs/method.md §1-2.

Token id layout (``discrete_layout="paper"``, the default, as in the paper)::

    text        [0, V)
    discrete    [0, num_discrete)            (overlaps text, as in the paper)
    continuous  [V, V + num_bins)
    separator   V + num_bins, then padding, then end-of-text

With ``discrete_layout="separate"`` discrete moves to ``[V + num_bins, V + num_bins + num_discrete)``
and the three special ids follow it.

Values are encoded in batches with a leading time (or environment) axis, so that tokenising a whole
episode is a handful of numpy operations per leaf of the space, never a Python loop per value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from opengato.kinds import Kind
from opengato.tokens.text import load_text_model


class TokenizeError(ValueError):
    """A value or space the tokenizer cannot encode; the message names the key path and problem."""


class TokenizeWarning(UserWarning):
    """A value the tokenizer encodes lossily beyond the usual binning (e.g. mu-law saturation)."""


@dataclass(frozen=True)
class TokenizerConfig:
    """How values become tokens. Written beside every checkpoint, so it must round-trip JSON."""

    text_vocab_size: int = 4096
    """Size V of the text (SentencePiece) vocabulary; the paper uses 32,000."""
    text_model: str | None = None
    """Path of a SentencePiece model; None trains (once, deterministically) and caches the
    built-in default model from Python's own documentation."""
    num_discrete: int = 1024
    """Number of discrete token values (the paper: 1024)."""
    num_bins: int = 1024
    """Number of uniform bins over [-1, 1] for continuous values (the paper: 1024)."""
    mu: float = 100.0
    """mu-law parameter mu (the paper: 100)."""
    M: float = 256.0
    """mu-law parameter M (the paper: 256). Companded values with |x| > M (and uncompanded
    values with |x| > 1) saturate at the edge bins; a TokenizeWarning says so once per leaf."""
    mu_law: Literal["when_needed", "always", "never"] = "when_needed"
    """Companding: 'when_needed' applies mu-law to a Box whose bounds are not inside [-1, 1]
    (decided per space, so decoding knows), 'always' to every Box, 'never' only clips (so
    values outside [-1, 1] saturate, with a TokenizeWarning once per leaf)."""
    discrete_layout: Literal["paper", "separate"] = "paper"
    """'paper': discrete ids overlap text ids [0, 1024); 'separate': they get their own block."""
    patch_size: int = 16
    """Side of the square image patches (the paper: 16)."""
    position_vocab: int = 128
    """Quantisation of the patch row/column intervals for the position encodings (paper: 128)."""

    def __post_init__(self) -> None:
        if self.discrete_layout not in ("paper", "separate"):
            raise ValueError(
                f"discrete_layout must be 'paper' or 'separate', got {self.discrete_layout!r}"
            )
        if self.mu_law not in ("when_needed", "always", "never"):
            raise ValueError(
                f"mu_law must be 'when_needed', 'always' or 'never', got {self.mu_law!r}"
            )
        if self.discrete_layout == "paper" and self.text_vocab_size < self.num_discrete:
            raise ValueError(
                f"the paper layout puts discrete ids in [0, {self.num_discrete}) inside the text block, "
                f"so text_vocab_size ({self.text_vocab_size}) must be >= num_discrete"
            )


# ---------------------------------------------------------------------------------------------
# Token streams


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


@dataclass
class _Block:
    """Tokens of one leaf of a space for a batch of B values: ids (B, n) or a ragged list."""

    ids: np.ndarray | list[np.ndarray]  # (B, n) int, or B arrays for text
    kind: Kind
    patches: np.ndarray | None = None  # (B, n, p, p, 3) uint8 for images
    patch_pos: np.ndarray | None = None  # (n, 4) uint8 for images


@dataclass
class _Rows:
    """B timesteps laid out with the same layout: ids (B, n); kind/obs_pos/target_mask (n,);
    patches (B, P, p, p, 3); patch_pos (P, 4)."""

    ids: np.ndarray
    kind: np.ndarray
    obs_pos: np.ndarray
    target_mask: np.ndarray
    patches: np.ndarray
    patch_pos: np.ndarray

    def row(self, i: int) -> _Rows:
        return _Rows(
            self.ids[i : i + 1],
            self.kind,
            self.obs_pos,
            self.target_mask,
            self.patches[i : i + 1],
            self.patch_pos,
        )


def _row(b: _Block, t: int) -> _Block:
    """Row t of a block, as a block of one row."""
    ids = b.ids[t][None] if isinstance(b.ids, list) else b.ids[t : t + 1]
    patches = None if b.patches is None else b.patches[t : t + 1]
    return _Block(ids, b.kind, patches, b.patch_pos)


def _fmt(path: str) -> str:
    return path or "value"


# ---------------------------------------------------------------------------------------------
# mu-law and binning (docs/method.md §1)


def mu_law_encode(x: np.ndarray, mu: float = 100.0, M: float = 256.0) -> np.ndarray:
    """F(x) = sign(x) * log(|x| * mu + 1) / log(M * mu + 1), elementwise.

    >>> round(float(mu_law_encode(np.array(1.0))), 4)
    0.4546
    """
    return np.sign(x) * np.log1p(np.abs(x) * mu) / np.log1p(M * mu)


def mu_law_decode(y: np.ndarray, mu: float = 100.0, M: float = 256.0) -> np.ndarray:
    """Inverse of :func:`mu_law_encode`."""
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(M * mu)) / mu


def _is_image(space: spaces.Space) -> bool:
    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[-1] in (1, 3)
    )


def _is_continuous(space: spaces.Space) -> bool:
    return isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating)


class Tokenizer:
    """Turns observations, actions, text and images into Gato tokens and back.

    Holds only the frozen config and the loaded SentencePiece model; all methods are pure.
    """

    def __init__(self, config: TokenizerConfig | None = None):
        self.config = config = config or TokenizerConfig()
        self._sp = load_text_model(config.text_model, config.text_vocab_size)
        if self._sp.get_piece_size() > config.text_vocab_size:
            raise ValueError(
                f"the SentencePiece model has {self._sp.get_piece_size()} pieces but "
                f"text_vocab_size is {config.text_vocab_size}"
            )
        V, nb, nd = config.text_vocab_size, config.num_bins, config.num_discrete
        self.continuous_offset = V
        if config.discrete_layout == "paper":
            self.discrete_offset = 0
            special = V + nb
        else:
            self.discrete_offset = V + nb
            special = V + nb + nd
        self.separator_id = special
        self.pad_id = special + 1
        self.eos_id = special + 2
        self.vocab_size = special + 3

    # -- text ---------------------------------------------------------------------------------

    def encode_text(self, text: str) -> np.ndarray:
        """SentencePiece ids of ``text`` as int32[n] (no end-of-text)."""
        if not isinstance(text, str):
            raise TokenizeError(f"expected a str, got {type(text).__name__}")
        return np.asarray(self._sp.encode(text), dtype=np.int32).reshape(-1)

    def decode_text(self, ids: np.ndarray | list[int]) -> str:
        """Text of SentencePiece ids; end-of-text and any non-text id end or are skipped."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self._sp.decode([i for i in ids if 0 <= i < self._sp.get_piece_size()])

    def tokenize_text(self, text: str) -> TokenSeq:
        """A text document: its tokens then end-of-text, all in the loss, one 'timestep'."""
        ids = np.append(self.encode_text(text), np.int32(self.eos_id)).astype(np.int32)
        n = len(ids)
        return TokenSeq(
            ids=ids,
            kind=np.full(n, Kind.TEXT, np.uint8),
            obs_pos=np.full(n, -1, np.int16),
            target_mask=np.ones(n, bool),
            timestep_starts=np.zeros(1, np.int64),
        )

    def tokenize_caption(self, image: np.ndarray, caption: str) -> TokenSeq:
        """An (image, caption) pair: the image patches (observation, not in the loss), then the
        caption and end-of-text (in the loss)."""
        img_space = spaces.Box(0, 255, np.asarray(image).shape, np.uint8)
        obs = self.tokenize_observation(img_space, image, path="image")
        seq = TokenSeq.concat([obs, self.tokenize_text(caption)])
        seq.timestep_starts = seq.timestep_starts[:1]
        return seq

    # -- observations and actions ----------------------------------------------------------

    def _encode(self, space: spaces.Space, values: Any, batch: int, path: str) -> list[_Block]:
        """Encode B values of ``space`` (leading axis B) into blocks, one per leaf, in stream
        order for a Dict/Tuple walk (keys sorted)."""
        if isinstance(space, spaces.Dict):
            keys = _sorted_keys(space, path)
            if not isinstance(values, dict):
                raise TokenizeError(
                    f"{_fmt(path)}: expected a dict for {space}, got {type(values).__name__}"
                )
            missing = set(space.spaces) - set(values)
            extra = set(values) - set(space.spaces)
            if missing or extra:
                raise TokenizeError(
                    f"{_fmt(path)}: keys do not match the Dict space (missing {sorted(missing)}, "
                    f"unexpected {sorted(map(str, extra))})"
                )
            return [
                b
                for k in keys
                for b in self._encode(space.spaces[k], values[k], batch, f"{path}[{k!r}]")
            ]
        if isinstance(space, spaces.Tuple):
            if not isinstance(values, (tuple, list)) or len(values) != len(space.spaces):
                raise TokenizeError(
                    f"{_fmt(path)}: expected a tuple of {len(space.spaces)} for {space}"
                )
            return [
                b
                for i, (s, v) in enumerate(zip(space.spaces, values, strict=True))
                for b in self._encode(s, v, batch, f"{path}[{i}]")
            ]
        if isinstance(space, spaces.Text):
            texts = _texts(space, values, batch, path)
            for t in texts:
                if not space.contains(t):
                    raise TokenizeError(f"{_fmt(path)}: {t!r} is not in {space}")
            return [_Block([self.encode_text(t) for t in texts], Kind.TEXT)]
        if isinstance(
            space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
        ):
            return [self._encode_array(space, values, batch, path)]
        raise TokenizeError(
            f"{_fmt(path)}: unsupported space {space} ({type(space).__name__}); the tokenizer handles "
            "Box, Discrete, MultiDiscrete, MultiBinary, Text, Dict and Tuple"
        )

    def _encode_array(self, space: spaces.Space, values: Any, batch: int, path: str) -> _Block:
        x = np.asarray(values)
        shape = tuple(space.shape)
        if x.shape == shape and batch == 1:
            x = x[None]
        if x.shape != (batch, *shape):
            raise TokenizeError(
                f"{_fmt(path)}: shape {x.shape} does not match {space} (expected {shape} per value"
                + (f", {(batch, *shape)} for a batch of {batch})" if batch != 1 else ")")
            )
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
            raise TokenizeError(f"{_fmt(path)}: dtype {x.dtype} is not numeric for {space}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise TokenizeError(f"{_fmt(path)}: contains NaN or infinite values")
        if _is_continuous(space):
            return self._encode_continuous(space, x.astype(np.float64), path)
        if np.issubdtype(x.dtype, np.floating):
            if not np.array_equal(x, np.round(x)):
                raise TokenizeError(
                    f"{_fmt(path)}: non-integer values for the discrete space {space}"
                )
        if _is_image(space):
            _check_image_range(space, x, path)
            return self._encode_image(x)
        low, n = _discrete_base(space, self.config.num_discrete, path)
        v = x.astype(np.int64).reshape(batch, -1) - low  # (B, n)
        bad = (v < 0) | (v >= n)
        if bad.any():
            i = int(np.argmax(bad.reshape(-1)))
            raise TokenizeError(
                f"{_fmt(path)}: value {x.reshape(-1)[i]} at flat index {i % v.shape[1]} is outside {space}"
            )
        return _Block((v + self.discrete_offset).astype(np.int32), Kind.DISCRETE)

    def _uses_mu_law(self, space: spaces.Box) -> bool:
        mode = self.config.mu_law
        if mode != "when_needed":
            return mode == "always"
        return not (np.all(space.low >= -1.0) and np.all(space.high <= 1.0))

    def _encode_continuous(self, space: spaces.Box, x: np.ndarray, path: str) -> _Block:
        batch = x.shape[0]
        lo = np.broadcast_to(space.low, space.shape)
        hi = np.broadcast_to(space.high, space.shape)
        # A tolerance of float32 rounding: envs often emit float32 values a hair past float64 bounds.
        tol = 1e-6 * np.maximum(1.0, np.abs(np.where(np.isfinite(lo), lo, 0)))
        bad = (x < lo - tol) | (x > hi + tol)
        if bad.any():
            i = int(np.argmax(bad.reshape(batch, -1).any(0)))
            flat = x.reshape(batch, -1)[:, i]
            raise TokenizeError(
                f"{_fmt(path)}: value {flat[bad.reshape(batch, -1)[:, i]][0]:.6g} at flat index {i} is "
                f"outside [{lo.reshape(-1)[i]:.6g}, {hi.reshape(-1)[i]:.6g}] of {space}"
            )
        y = self._compand(space, x.reshape(batch, -1))
        self._warn_if_saturated(space, y, path)
        return _Block((self._bins(y) + self.continuous_offset).astype(np.int32), Kind.CONTINUOUS)

    def _compand(self, space: spaces.Box, x: np.ndarray) -> np.ndarray:
        """Float64 values of a continuous leaf -> [-1, 1] (mu-law when the space uses it);
        values past the range come out past +-1 and saturate in :meth:`_bins`."""
        if self._uses_mu_law(space):
            return mu_law_encode(x, self.config.mu, self.config.M)
        return x

    def _bins(self, y: np.ndarray) -> np.ndarray:
        """Companded values -> bin indices in [0, num_bins) (uniform bins over [-1, 1])."""
        nb = self.config.num_bins
        bins = np.clip(np.floor((np.clip(y, -1.0, 1.0) + 1.0) * (nb / 2.0)), 0, nb - 1)
        return bins.astype(np.int64)

    def _warn_if_saturated(self, space: spaces.Box, y: np.ndarray, path: str) -> None:
        """Warn (once per process per leaf) when companded values lie past [-1, 1]: they all
        collapse onto the edge bins, which a user cannot see otherwise. The 1e-6 slack matches
        the encoder's tolerance for float32 values a hair past bounds of +-1."""
        if not (np.abs(y) > 1.0 + 1e-6).any():  # the common case: no key to format
            return
        key = (_fmt(path), str(space))
        if key in _SATURATION_WARNED:
            return
        _SATURATION_WARNED.add(key)
        if self._uses_mu_law(space):
            limit = f"the mu-law range |x| <= M = {self.config.M:g}"
        else:
            limit = "[-1, 1] (this space is not mu-law companded)"
        warnings.warn(
            f"{_fmt(path)}: values of {space} beyond {limit} saturate at the edge bins and decode "
            "to the edge value (TokenizerConfig.M and mu_law set the range; warned once per leaf)",
            TokenizeWarning,
            stacklevel=2,
        )

    def _encode_image(self, x: np.ndarray) -> _Block:
        p = self.config.patch_size
        images = pad_image(x, p)  # (B, H, W, 3)
        B, H, W, _ = images.shape
        nr, nc = H // p, W // p
        patches = (
            images.reshape(B, nr, p, nc, p, 3)
            .transpose(0, 1, 3, 2, 4, 5)
            .reshape(B, nr * nc, p, p, 3)
        )
        return _Block(
            np.full((B, nr * nc), self.pad_id, np.int32),
            Kind.IMAGE,
            patches=patches,
            patch_pos=patch_positions(nr, nc, self.config.position_vocab),
        )

    def _assemble(self, obs_blocks: list[_Block], act_blocks: list[_Block] | None) -> list[_Rows]:
        """Lay out B timesteps: the observation (text, then images, then tensors), then, when
        actions are given, the separator and the action tokens. Fixed-size observations give one
        ``_Rows`` of B rows; observations with text (ragged) give B ``_Rows`` of one row each."""
        order = {Kind.TEXT: 0, Kind.IMAGE: 1}
        obs_blocks = sorted(obs_blocks, key=lambda b: order.get(b.kind, 2))  # stable
        if any(isinstance(b.ids, list) for b in obs_blocks):
            batch = len(next(b.ids for b in obs_blocks if isinstance(b.ids, list)))
            return [
                self._assemble(
                    [_row(b, t) for b in obs_blocks], [_row(b, t) for b in act_blocks or []] or None
                )[0]
                for t in range(batch)
            ]
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
            ids += [np.full((B, 1), self.separator_id, np.int32)] + [b.ids for b in act_blocks]
            kind += [np.array([Kind.SEPARATOR], np.uint8)]
            kind += [np.full(b.ids.shape[1], b.kind, np.uint8) for b in act_blocks]
            mask += [np.zeros(1, bool), np.ones(n_act, bool)]
            pos += [np.full(1 + n_act, -1, np.int16)]
        img = [b for b in obs_blocks if b.kind == Kind.IMAGE]
        p = self.config.patch_size
        return [
            _Rows(
                ids=np.concatenate(ids, axis=1).astype(np.int32),
                kind=np.concatenate(kind),
                obs_pos=np.concatenate(pos),
                target_mask=np.concatenate(mask),
                patches=np.concatenate([b.patches for b in img], 1)
                if img
                else np.zeros((B, 0, p, p, 3), np.uint8),
                patch_pos=np.concatenate([b.patch_pos for b in img])
                if img
                else np.zeros((0, 4), np.uint8),
            )
        ]

    @staticmethod
    def _flatten(rows: list[_Rows]) -> TokenSeq:
        """All rows of all ``_Rows`` end to end, one timestep per row."""
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

    def tokenize_observation(self, space: spaces.Space, obs: Any, path: str = "obs") -> TokenSeq:
        """One observation's tokens (no separator). Observation tokens carry obs_pos 0, 1, ..."""
        return self._flatten(self._assemble(self._encode(space, obs, 1, path), None))

    def tokenize_observations(
        self, space: spaces.Space, obs: Any, n: int, path: str = "obs"
    ) -> list[TokenSeq]:
        """A batch of ``n`` observations (leading axis n, e.g. from a vector env): one
        TokenSeq each, encoded leaf by leaf in one pass."""
        rows = self._assemble(self._encode(space, obs, n, path), None)
        return [self._flatten([r.row(i)]) for r in rows for i in range(r.ids.shape[0])]

    def tokenize_action(self, space: spaces.Space, action: Any, path: str = "action") -> np.ndarray:
        """Token ids int32[n_act] of one action."""
        blocks = self._encode_action(space, action, 1, path)
        return np.concatenate([b.ids for b in blocks], axis=1)[0]

    def _encode_action(
        self, space: spaces.Space, actions: Any, batch: int, path: str
    ) -> list[_Block]:
        blocks = self._encode(space, actions, batch, path)
        for b in blocks:
            if b.kind not in (Kind.DISCRETE, Kind.CONTINUOUS):
                raise TokenizeError(
                    f"{_fmt(path)}: action spaces must be discrete or continuous, not {Kind(b.kind).name.lower()}"
                )
        return blocks

    def tokenize_episode(
        self, obs_space: spaces.Space, act_space: spaces.Space, observations: Any, actions: Any
    ) -> TokenSeq:
        """A whole episode of T timesteps: for each t, observation tokens, separator, action
        tokens. ``observations`` and ``actions`` carry a leading axis T (dicts of arrays for
        Dict spaces, lists of str for Text). Vectorised per leaf."""
        T = _leading_len(actions, act_space)
        obs_blocks = self._encode(obs_space, observations, T, "obs")
        act_blocks = self._encode_action(act_space, actions, T, "action")
        return self._flatten(self._assemble(obs_blocks, act_blocks))

    def separator(self) -> TokenSeq:
        """The single separator token that ends an observation."""
        return TokenSeq(
            ids=np.array([self.separator_id], np.int32),
            kind=np.array([Kind.SEPARATOR], np.uint8),
            obs_pos=np.array([-1], np.int16),
            target_mask=np.zeros(1, bool),
            timestep_starts=np.zeros(1, np.int64),
        )

    # -- decoding -----------------------------------------------------------------------------

    def action_token_ranges(self, space: spaces.Space) -> np.ndarray:
        """For each action token position, the half-open id range [lo, hi) that is legal for it:
        int64[n_act, 2]. Every legal value (the bounds included) encodes inside these ranges,
        and sampling restricted to them always decodes inside the space."""
        ranges: list[np.ndarray] = []
        self._ranges(space, "action", ranges)
        return np.concatenate(ranges).astype(np.int64) if ranges else np.zeros((0, 2), np.int64)

    def _ranges(self, space: spaces.Space, path: str, out: list[np.ndarray]) -> None:
        if isinstance(space, spaces.Dict):
            for k in _sorted_keys(space, path):
                self._ranges(space.spaces[k], f"{path}[{k!r}]", out)
        elif isinstance(space, spaces.Tuple):
            for i, s in enumerate(space.spaces):
                self._ranges(s, f"{path}[{i}]", out)
        elif _is_continuous(space):
            # Encoding is monotone, so the legal values [low, high] encode exactly to the bins
            # from low's bin to high's bin. (Bins whose *centres* lie inside the bounds would
            # miss a bound that sits past the centre of its own bin, e.g. 0.5 or -10.)
            lo = np.broadcast_to(space.low, space.shape).reshape(-1).astype(np.float64)
            hi = np.broadcast_to(space.high, space.shape).reshape(-1).astype(np.float64)
            first, last = self._bins(self._compand(space, lo)), self._bins(self._compand(space, hi))
            out.append(np.stack([first, last + 1], 1) + self.continuous_offset)
        elif isinstance(
            space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
        ):
            if _is_image(space):
                raise TokenizeError(f"{path}: image spaces cannot be actions")
            _, n = _discrete_base(space, self.config.num_discrete, path)
            n = np.broadcast_to(n, (int(np.prod(space.shape)),))
            out.append(np.stack([np.zeros_like(n), n], 1) + self.discrete_offset)
        else:
            raise TokenizeError(f"{path}: unsupported action space {space}")

    def _bin_centres(self, space: spaces.Box) -> np.ndarray:
        nb = self.config.num_bins
        y = -1.0 + (np.arange(nb) + 0.5) * (2.0 / nb)
        if self._uses_mu_law(space):
            y = mu_law_decode(y, self.config.mu, self.config.M)
        return y

    def detokenize(self, space: spaces.Space, ids: np.ndarray, path: str = "value") -> Any:
        """The value of ``space`` that the token ids (int[n], or int[B, n] for a batch) decode to.
        Continuous values decode to bin centres (then inverse mu-law), clipped to the space's
        bounds. Spaces with images cannot be decoded (images are not tokens); at most one Text
        leaf is allowed (its length is what the fixed-size leaves leave over)."""
        ids = np.asarray(ids)
        batched = ids.ndim == 2
        ids2 = ids if batched else ids[None]
        leaves = _stream_leaves(space, path)
        n_fixed = sum(_leaf_size(s, p) or 0 for _, s, p in leaves)
        n_text = ids2.shape[1] - n_fixed
        has_text = [isinstance(s, spaces.Text) for _, s, _ in leaves]
        if sum(has_text) > 1:
            raise TokenizeError(f"{path}: cannot split the tokens of more than one Text leaf")
        if n_text < 0 or (n_text != 0 and not any(has_text)):
            raise TokenizeError(f"{path}: got {ids2.shape[1]} tokens, {space} needs {n_fixed}")
        decoded: dict[tuple, Any] = {}
        start = 0
        for keys, leaf, leaf_path in leaves:
            n = _leaf_size(leaf, leaf_path)
            n = n_text if n is None else n
            decoded[keys] = self._decode_leaf(leaf, ids2[:, start : start + n], leaf_path)
            start += n
        value = _rebuild(space, decoded, ())
        return value if batched else _unbatch(value)

    def _decode_leaf(self, space: spaces.Space, chunk: np.ndarray, path: str) -> Any:
        """B values of one leaf from its (B, n) slice of token ids."""
        if isinstance(space, spaces.Text):
            return [self.decode_text(row) for row in chunk]
        n = chunk.shape[1]
        chunk = chunk.astype(np.int64)
        B = chunk.shape[0]
        if _is_continuous(space):
            b = chunk - self.continuous_offset
            if ((b < 0) | (b >= self.config.num_bins)).any():
                raise TokenizeError(f"{path}: ids {chunk.tolist()} are not continuous tokens")
            v = self._bin_centres(space)[b].reshape(B, *space.shape)
            return np.clip(v, space.low, space.high).astype(space.dtype)
        low, size = _discrete_base(space, self.config.num_discrete, path)
        v = chunk - self.discrete_offset
        if ((v < 0) | (v >= np.broadcast_to(size, (n,)).reshape(1, -1))).any():
            raise TokenizeError(
                f"{path}: ids {chunk.tolist()} are outside the legal range of {space}"
            )
        v = (v + np.asarray(low).reshape(1, -1) if np.ndim(low) else v + low).reshape(
            B, *space.shape
        )
        if isinstance(space, spaces.Discrete):
            return v.reshape(B).astype(space.dtype)
        return v.astype(space.dtype)


# ---------------------------------------------------------------------------------------------
# helpers


_SATURATION_WARNED: set[tuple[str, str]] = set()
"""(key path, space) pairs already warned about saturation: the warning is once per leaf."""


def _sorted_keys(space: spaces.Dict, path: str) -> list:
    """A Dict's keys in token order (sorted), or a TokenizeError if they cannot be ordered."""
    try:
        return sorted(space.spaces)
    except TypeError:
        raise TokenizeError(
            f"{_fmt(path)}: the Dict keys {list(space.spaces)!r} have mixed types that cannot be "
            "sorted, and tokens follow sorted key order; use keys of one type (e.g. all str)"
        ) from None


def _texts(space: spaces.Text, values: Any, batch: int, path: str) -> list[str]:
    """The B strings of a Text leaf. A lone str is one value, never a batch of characters."""
    if isinstance(values, str):
        if batch != 1:
            raise TokenizeError(
                f"{_fmt(path)}: got a single str for a batch of {batch} values of {space}; "
                f"pass a list of {batch} str, one per value"
            )
        return [values]
    try:
        texts = list(values)
    except TypeError:
        raise TokenizeError(
            f"{_fmt(path)}: expected a str for {space}, got {type(values).__name__}"
        ) from None
    if len(texts) != batch:
        raise TokenizeError(f"{_fmt(path)}: expected {batch} str value(s) for {space}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TokenizeError(
                f"{_fmt(path)}: value {i} is a {type(t).__name__}, not a str, for {space}"
            )
    return texts


def _check_image_range(space: spaces.Box, x: np.ndarray, path: str) -> None:
    """Raise if pixels lie outside the image Box's bounds: casting them to uint8 would wrap
    them modulo 256 silently. uint8 pixels under the usual [0, 255] bounds need no check."""
    low, high = space.low, space.high
    if x.dtype == np.uint8 and (low == 0).all() and (high == 255).all():
        return
    bad = (x < low) | (x > high)
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), x.shape)[1:]  # index within one image
        v = x[(slice(None), *i)][bad[(slice(None), *i)]][0]
        raise TokenizeError(
            f"{_fmt(path)}: pixel value {v} at {tuple(map(int, i))} is outside "
            f"[{low[i]}, {high[i]}] of the image space {space}"
        )


def _stream_leaves(space: spaces.Space, path: str) -> list[tuple[tuple, spaces.Space, str]]:
    """(keys from the root, leaf space, key path) of every leaf, in token stream order: the
    walk order (Dict keys sorted, Tuples in order), with Text leaves moved first, as
    :meth:`Tokenizer._assemble` lays them out. Images have no ids and cannot be decoded."""
    leaves = _walk(space, path, ())
    for _, leaf, leaf_path in leaves:
        if _is_image(leaf):
            raise TokenizeError(
                f"{leaf_path}: image leaves are patches, not tokens, and cannot be decoded"
            )
    return sorted(leaves, key=lambda leaf: not isinstance(leaf[1], spaces.Text))  # stable


def _walk(space: spaces.Space, path: str, keys: tuple) -> list[tuple[tuple, spaces.Space, str]]:
    if isinstance(space, spaces.Dict):
        return [
            leaf
            for k in _sorted_keys(space, path)
            for leaf in _walk(space.spaces[k], f"{path}[{k!r}]", (*keys, k))
        ]
    if isinstance(space, spaces.Tuple):
        return [
            leaf
            for i, s in enumerate(space.spaces)
            for leaf in _walk(s, f"{path}[{i}]", (*keys, i))
        ]
    return [(keys, space, path)]


def _leaf_size(space: spaces.Space, path: str) -> int | None:
    """Number of tokens of a leaf; None for Text (variable length)."""
    if isinstance(space, spaces.Text):
        return None
    if isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return int(np.prod(space.shape))
    raise TokenizeError(f"{path}: unsupported space {space}")


def _rebuild(space: spaces.Space, decoded: dict[tuple, Any], keys: tuple) -> Any:
    """The nested value of ``space`` from its leaves' values, keyed by their keys from the root."""
    if isinstance(space, spaces.Dict):
        return {k: _rebuild(space.spaces[k], decoded, (*keys, k)) for k in sorted(space.spaces)}
    if isinstance(space, spaces.Tuple):
        return tuple(_rebuild(s, decoded, (*keys, i)) for i, s in enumerate(space.spaces))
    return decoded[keys]


def _unbatch(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unbatch(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_unbatch(v) for v in value)
    if isinstance(value, list):
        return value[0]
    return value[0]


def _leading_len(actions: Any, space: spaces.Space, path: str = "action") -> int:
    """T, the leading (time) axis of a batch of actions, read off their first leaf."""
    if isinstance(space, spaces.Dict) and isinstance(actions, dict) and space.spaces:
        k = _sorted_keys(space, path)[0]
        if k not in actions:
            raise TokenizeError(f"{_fmt(path)}: keys do not match the Dict space (missing [{k!r}])")
        return _leading_len(actions[k], space.spaces[k], f"{path}[{k!r}]")
    if isinstance(space, spaces.Tuple) and isinstance(actions, (tuple, list)) and actions:
        return _leading_len(actions[0], space.spaces[0], f"{path}[0]")
    try:
        return len(actions)
    except TypeError:  # a scalar: _encode would report a shape error for T = 1 only
        raise TokenizeError(
            f"{_fmt(path)}: expected actions with a leading time axis for {space}, "
            f"got {type(actions).__name__}"
        ) from None


def _discrete_base(space: spaces.Space, num_discrete: int, path: str) -> tuple[Any, Any]:
    """(offset subtracted from values, number of values) of a discrete leaf, so that tokens are
    always ``value - low`` in [0, n). Raises if the space needs more than ``num_discrete`` ids."""
    if isinstance(space, spaces.Discrete):
        low, n = int(space.start), int(space.n)
    elif isinstance(space, spaces.MultiDiscrete):
        low, n = np.asarray(space.start).reshape(-1), np.asarray(space.nvec).reshape(-1)
    elif isinstance(space, spaces.MultiBinary):
        low, n = 0, 2
    elif isinstance(space, spaces.Box):
        lo = np.broadcast_to(space.low, space.shape).reshape(-1)
        hi = np.broadcast_to(space.high, space.shape).reshape(-1)
        if space.dtype == np.bool_:
            lo, hi = np.zeros(lo.shape, np.int64), np.ones(hi.shape, np.int64)
        # Count in float64 before any int64 arithmetic: integer Boxes given infinite bounds get
        # the dtype's limits, and int64 ``hi - lo + 1`` would wrap (negative counts, no error).
        span = hi.astype(np.float64) - lo.astype(np.float64) + 1
        if span.size and span.max() > num_discrete:
            j = int(np.argmax(span))
            _raise_too_many(space, int(hi[j]) - int(lo[j]) + 1, num_discrete, path)
        lo, hi = lo.astype(np.int64), hi.astype(np.int64)
        low, n = lo, hi - lo + 1
    else:
        raise TokenizeError(f"{path}: {space} is not discrete")
    if np.max(n) > num_discrete:
        _raise_too_many(space, int(np.max(n)), num_discrete, path)
    return low, n


def _raise_too_many(space: spaces.Space, count: int, num_discrete: int, path: str) -> None:
    raise TokenizeError(
        f"{path}: {space} has {count} values but only {num_discrete} discrete tokens exist "
        "(TokenizerConfig.num_discrete); narrow the space's bounds or raise num_discrete"
    )


def pad_image(images: np.ndarray, patch: int = 16) -> np.ndarray:
    """(B, H, W, C) uint8 -> (B, H', W', 3): zero-padded at the bottom and right to multiples of
    ``patch`` (padding keeps every real pixel exact, unlike resizing); grayscale repeated to 3."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    B, H, W, _ = images.shape
    ph, pw = (-H) % patch, (-W) % patch
    if ph or pw:
        images = np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)))
    return images.astype(np.uint8, copy=False)


def patch_positions(n_rows: int, n_cols: int, vocab: int = 128) -> np.ndarray:
    """uint8[n_rows * n_cols, 4]: each patch's (row_lo, row_hi, col_lo, col_hi) normalised
    interval quantised to ``vocab`` bins, half-open, raster order (docs/method.md §1, images)."""

    def intervals(n: int) -> np.ndarray:
        i = np.arange(n)
        lo = np.floor(i / n * vocab).astype(np.int64)
        hi = np.maximum(np.ceil((i + 1) / n * vocab).astype(np.int64), lo + 1)
        return np.stack([lo, np.minimum(hi, vocab)], 1)

    r, c = intervals(n_rows), intervals(n_cols)
    rows = np.repeat(r, n_cols, axis=0)
    cols = np.tile(c, (n_rows, 1))
    return np.concatenate([rows, cols], 1).astype(np.uint8)


def normalize_patches(patches: np.ndarray) -> np.ndarray:
    """uint8[P, p, p, 3] -> float32[P, 3, p, p]: pixels to [-1, 1], then divided by sqrt(16)=4."""
    x = patches.astype(np.float32) * (2.0 / 255.0) - 1.0
    return np.ascontiguousarray((x / 4.0).transpose(0, 3, 1, 2))
