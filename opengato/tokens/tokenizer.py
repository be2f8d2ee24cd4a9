"""Gato's tokenizer: any Gymnasium observation or action <-> one flat stream of tokens.

Pure numpy, no torch. Every function maps ``(space, value) -> tokens`` or back, and what it
returns depends on the frozen config and the SentencePiece model it names alone (a tokenizer
remembers only which saturation warnings it gave). See docs/method.md §1-2.

Token id layout (``discrete_layout="paper"``, the default, as in the paper)::

    text        [0, V)
    discrete    [0, num_discrete)            (overlaps text, as in the paper)
    continuous  [V, V + num_bins)
    separator   V + num_bins, then padding, then end-of-text

With ``discrete_layout="separate"`` discrete moves to ``[V + num_bins, V + num_bins + num_discrete)``
and the three special ids follow it.

Values are encoded in batches with a leading time (or environment) axis, so that tokenising a whole
episode is a handful of numpy operations per leaf of the space, never a Python loop per value.
The space is walked by `opengato.tokens.spaces`, each leaf encoded by `opengato.tokens.codecs`,
and the leaves' tokens laid out into timesteps by `opengato.tokens.seq`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from opengato.kinds import Kind
from opengato.tokens import spaces as walk
from opengato.tokens.codecs import (
    TokenizeError,
    array_values,
    bin_centres,
    check_bounds,
    check_image_range,
    discrete_base,
    discrete_decode,
    discrete_encode,
    image_patches,
    leaf_kind,
    mu_law_decode,
    mu_law_encode,
    patch_positions,
    text_values,
    to_bins,
)
from opengato.tokens.seq import (
    Block,
    Rows,
    TokenSeq,
    flatten_rows,
    lay_out_groups,
    lay_out_timesteps,
    leaf_slices,
)
from opengato.tokens.text import load_text_model


class TokenizeWarning(UserWarning):
    """A value the tokenizer encodes lossily beyond the usual binning (e.g. mu-law saturation)."""


TEXT_MEMO = 4096
"""Distinct texts whose token ids a tokenizer remembers (`Tokenizer._memo_text`)."""


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


@contextmanager
def _as_tokenize_error() -> Iterator[None]:
    """Re-raise a walk's SpaceError (a value shaped unlike its space, Dict keys that cannot be
    sorted) as a TokenizeError: the one error the tokenizer raises for what it cannot encode."""
    try:
        yield
    except walk.SpaceError as e:
        raise TokenizeError(str(e)) from None


def _check_action_kind(kind: Kind, path: str) -> None:
    """Actions are discrete or continuous tokens: text and images are observations only."""
    if kind not in (Kind.DISCRETE, Kind.CONTINUOUS):
        raise TokenizeError(
            f"{path}: action spaces must be discrete or continuous, not {kind.name.lower()}"
        )


class Tokenizer:
    """Turns observations, actions, text and images into Gato tokens and back.

    Holds the frozen config, the loaded SentencePiece model and the leaves it has already warned
    about (a TokenizeWarning is once per tokenizer per leaf); what it encodes depends on the
    config and the model alone.
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
        self._saturation_warned: set[tuple[str, str]] = set()  # (key path, space)
        self._text_ids: dict[str, np.ndarray] = {}  # `_encode_leaf`'s memo of observed texts
        # The two tables continuous tokens decode to (plain and mu-law), read-only: a policy
        # decodes every action with one, and building it was the largest single cost of
        # decoding a small action (benchmarks/RESULTS.md, "The evaluating process's host time")
        centres = bin_centres(nb)
        self._centres = {False: centres, True: mu_law_decode(centres, config.mu, config.M)}
        for table in self._centres.values():
            table.flags.writeable = False

    # -- text ---------------------------------------------------------------------------------

    def encode_text(self, text: str) -> np.ndarray:
        """SentencePiece ids of ``text`` as int32[n] (no end-of-text)."""
        if not isinstance(text, str):
            raise TokenizeError(f"expected a str, got {type(text).__name__}")
        return np.asarray(self._sp.encode(text), dtype=np.int32).reshape(-1)

    def _memo_text(self, text: str) -> np.ndarray:
        """`encode_text`, remembered (read-only) for up to TEXT_MEMO strings: an observation's
        text repeats every step (a BabyAI mission), and a policy acting for 640 envs encoded
        640 of them a step."""
        ids = self._text_ids.get(text)
        if ids is None:
            if len(self._text_ids) >= TEXT_MEMO:
                self._text_ids.clear()
            ids = self._text_ids[text] = self.encode_text(text)
            ids.flags.writeable = False
        return ids

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

    def tokenize_observation(self, space: spaces.Space, obs: Any, path: str = "obs") -> TokenSeq:
        """One observation's tokens (no separator). Observation tokens carry obs_pos 0, 1, ..."""
        return flatten_rows(self._lay_out(self._encode(space, obs, 1, path), None))

    def tokenize_observations(
        self, space: spaces.Space, obs: Any, n: int, path: str = "obs"
    ) -> list[TokenSeq]:
        """A batch of ``n`` observations (leading axis n, e.g. from a vector env): one
        TokenSeq each, encoded leaf by leaf in one pass."""
        rows = self.observation_rows(space, obs, n, path)
        return [flatten_rows([r.row(i)]) for r in rows for i in range(r.ids.shape[0])]

    def observation_rows(
        self, space: spaces.Space, obs: Any, n: int, path: str = "obs"
    ) -> list[Rows]:
        """`tokenize_observations` before it is split into TokenSeqs: one `Rows` of n rows for
        fixed-size observations (`SeqStack.from_rows` stacks it at once), n of one row with text."""
        return self._lay_out(self._encode(space, obs, n, path), None)

    def observation_groups(
        self, space: spaces.Space, obs: Any, n: int, path: str = "obs"
    ) -> list[tuple[list[int], Rows]]:
        """`observation_rows` as (rows, their `Rows`) per layout: one group for fixed-size
        observations; with text, the observations whose text tokenises to one length together
        (a policy stacks each group at once: `SeqStack.from_rows`)."""
        return lay_out_groups(self._encode(space, obs, n, path), None, self.separator_id,
                              self.config.patch_size)  # fmt: skip

    def tokenize_action(self, space: spaces.Space, action: Any, path: str = "action") -> np.ndarray:
        """Token ids int32[n_act] of one action."""
        blocks = self._encode_action(space, action, 1, path)
        return np.concatenate([b.ids for b in blocks], axis=1)[0]

    def tokenize_episode(
        self, obs_space: spaces.Space, act_space: spaces.Space, observations: Any, actions: Any
    ) -> TokenSeq:
        """A whole episode of T timesteps: for each t, observation tokens, separator, action
        tokens. ``observations`` and ``actions`` carry a leading axis T (dicts of arrays for
        Dict spaces, lists of str for Text). Vectorised per leaf."""
        with _as_tokenize_error():
            walk.check(act_space, actions, "action")
            T = walk.batch_len(act_space, actions, "action")
        obs_blocks = self._encode(obs_space, observations, T, "obs")
        act_blocks = self._encode_action(act_space, actions, T, "action")
        return flatten_rows(self._lay_out(obs_blocks, act_blocks))

    def separator(self) -> TokenSeq:
        """The single separator token that ends an observation."""
        return TokenSeq(
            ids=np.array([self.separator_id], np.int32),
            kind=np.array([Kind.SEPARATOR], np.uint8),
            obs_pos=np.array([-1], np.int16),
            target_mask=np.zeros(1, bool),
            timestep_starts=np.zeros(1, np.int64),
        )

    def _lay_out(self, obs_blocks: list[Block], act_blocks: list[Block] | None) -> list[Rows]:
        return lay_out_timesteps(obs_blocks, act_blocks, self.separator_id, self.config.patch_size)

    def _encode(self, space: spaces.Space, values: Any, batch: int, path: str) -> list[Block]:
        """B values of ``space`` (leading axis B on every leaf) -> one Block per leaf, in walk
        order (Dict keys sorted, Tuple entries in order)."""
        with _as_tokenize_error():
            walk.check(space, values, path)
            leaves = walk.leaves(space, path)
        return [self._encode_leaf(leaf, walk.get(values, leaf.keys), batch) for leaf in leaves]

    def _encode_action(
        self, space: spaces.Space, actions: Any, batch: int, path: str
    ) -> list[Block]:
        blocks = self._encode(space, actions, batch, path)
        for b in blocks:
            _check_action_kind(b.kind, path)
        return blocks

    def _encode_leaf(self, leaf: walk.Leaf, values: Any, batch: int) -> Block:
        """The B values of one leaf -> its Block of tokens."""
        space, path = leaf.space, leaf.path
        kind = leaf_kind(space, path)
        if kind == Kind.TEXT:
            texts = text_values(space, values, batch, path)
            return Block([self._memo_text(t) for t in texts], Kind.TEXT)
        x = array_values(space, values, batch, path, integral=kind != Kind.CONTINUOUS)
        if kind == Kind.CONTINUOUS:
            return self._encode_continuous(space, x.astype(np.float64), path)
        if kind == Kind.IMAGE:
            check_image_range(space, x, path)
            return self._encode_image(x)
        v = discrete_encode(space, x, self.config.num_discrete, path)  # (B, n)
        return Block((v + self.discrete_offset).astype(np.int32), Kind.DISCRETE)

    def _encode_continuous(self, space: spaces.Box, x: np.ndarray, path: str) -> Block:
        """Float64 values (B, *shape) of a continuous leaf -> bin tokens (B, n)."""
        check_bounds(space, x, path)
        y = self._compand(space, x.reshape(x.shape[0], -1))
        self._warn_if_saturated(space, y, path)
        bins = to_bins(y, self.config.num_bins)
        return Block((bins + self.continuous_offset).astype(np.int32), Kind.CONTINUOUS)

    def _encode_image(self, x: np.ndarray) -> Block:
        """Images (B, H, W, C) -> padding tokens (B, n) holding their n patches."""
        patches, n_rows, n_cols = image_patches(x, self.config.patch_size)
        return Block(
            np.full((x.shape[0], n_rows * n_cols), self.pad_id, np.int32),
            Kind.IMAGE,
            patches=patches,
            patch_pos=patch_positions(n_rows, n_cols, self.config.position_vocab),
        )

    def _uses_mu_law(self, space: spaces.Box) -> bool:
        mode = self.config.mu_law
        if mode != "when_needed":
            return mode == "always"
        return not (np.all(space.low >= -1.0) and np.all(space.high <= 1.0))

    def _compand(self, space: spaces.Box, x: np.ndarray) -> np.ndarray:
        """Float64 values of a continuous leaf -> [-1, 1] (mu-law when the space uses it);
        values past the range come out past +-1 and saturate in `to_bins`."""
        if self._uses_mu_law(space):
            return mu_law_encode(x, self.config.mu, self.config.M)
        return x

    def _warn_if_saturated(self, space: spaces.Box, y: np.ndarray, path: str) -> None:
        """Warn (once per tokenizer per leaf) when companded values lie past [-1, 1]: they all
        collapse onto the edge bins, which a user cannot see otherwise. The 1e-6 slack matches
        the encoder's tolerance for float32 values a hair past bounds of +-1."""
        if not (np.abs(y) > 1.0 + 1e-6).any():  # the common case: no key to format
            return
        key = (path, str(space))
        if key in self._saturation_warned:
            return
        self._saturation_warned.add(key)
        if self._uses_mu_law(space):
            limit = f"the mu-law range |x| <= M = {self.config.M:g}"
        else:
            limit = "[-1, 1] (this space is not mu-law companded)"
        warnings.warn(
            f"{path}: values of {space} beyond {limit} saturate at the edge bins and decode "
            "to the edge value (TokenizerConfig.M and mu_law set the range; warned once per leaf)",
            TokenizeWarning,
            stacklevel=2,
        )

    # -- decoding -----------------------------------------------------------------------------

    def action_token_ranges(self, space: spaces.Space) -> np.ndarray:
        """For each action token position, the half-open id range [lo, hi) that is legal for it:
        int64[n_act, 2]. Every legal value (the bounds included) encodes inside these ranges,
        and sampling restricted to them always decodes inside the space."""
        with _as_tokenize_error():
            leaves = walk.leaves(space, "action")
        ranges = [self._leaf_ranges(leaf) for leaf in leaves]
        return np.concatenate(ranges).astype(np.int64) if ranges else np.zeros((0, 2), np.int64)

    def _leaf_ranges(self, leaf: walk.Leaf) -> np.ndarray:
        """int64[n, 2]: the legal id range of each token of one action leaf."""
        space, path = leaf.space, leaf.path
        kind = leaf_kind(space, path)
        _check_action_kind(kind, path)
        if kind == Kind.CONTINUOUS:
            # Encoding is monotone, so the legal values [low, high] encode exactly to the bins
            # from low's bin to high's bin. (Bins whose *centres* lie inside the bounds would
            # miss a bound that sits past the centre of its own bin, e.g. 0.5 or -10.)
            lo = np.broadcast_to(space.low, space.shape).reshape(-1).astype(np.float64)
            hi = np.broadcast_to(space.high, space.shape).reshape(-1).astype(np.float64)
            nb = self.config.num_bins
            first = to_bins(self._compand(space, lo), nb)
            last = to_bins(self._compand(space, hi), nb)
            return np.stack([first, last + 1], 1) + self.continuous_offset
        _, n = discrete_base(space, self.config.num_discrete, path)
        n = np.broadcast_to(n, (int(np.prod(space.shape)),))
        return np.stack([np.zeros_like(n), n], 1) + self.discrete_offset

    def detokenize(self, space: spaces.Space, ids: np.ndarray, path: str = "value") -> Any:
        """The value of ``space`` that the token ids (int[n], or int[B, n] for a batch) decode to.
        Continuous values decode to bin centres (then inverse mu-law), clipped to the space's
        bounds. Spaces with images cannot be decoded (images are not tokens); at most one Text
        leaf is allowed (its length is what the fixed-size leaves leave over)."""
        ids = np.asarray(ids)
        batched = ids.ndim == 2
        rows = ids if batched else ids[None]  # (B, n)
        with _as_tokenize_error():
            slices = leaf_slices(space, rows.shape[1], path)
        decoded = {
            leaf.keys: self._decode_leaf(leaf, kind, rows[:, at]) for leaf, kind, at in slices
        }
        return walk.build(
            space, lambda leaf: decoded[leaf.keys] if batched else decoded[leaf.keys][0], path
        )

    def _decode_leaf(self, leaf: walk.Leaf, kind: Kind, chunk: np.ndarray) -> Any:
        """B values of one leaf from its (B, n) slice of token ids."""
        space, path = leaf.space, leaf.path
        if kind == Kind.TEXT:
            return [self.decode_text(row) for row in chunk]
        chunk = chunk.astype(np.int64)
        if kind == Kind.CONTINUOUS:
            b = chunk - self.continuous_offset
            if ((b < 0) | (b >= self.config.num_bins)).any():
                raise TokenizeError(f"{path}: ids {chunk.tolist()} are not continuous tokens")
            v = self._bin_centres(space)[b].reshape(chunk.shape[0], *space.shape)
            return np.clip(v, space.low, space.high).astype(space.dtype)
        return discrete_decode(space, chunk, self.discrete_offset, self.config.num_discrete, path)

    def _bin_centres(self, space: spaces.Box) -> np.ndarray:
        """float64[num_bins]: the value each bin of a continuous leaf decodes to (read-only)."""
        return self._centres[bool(self._uses_mu_law(space))]
