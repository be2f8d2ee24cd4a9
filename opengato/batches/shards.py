"""Token shards on disk: each dataset tokenised once into a folder of flat, memory-mapped arrays.

A shard holds ``ids``, ``kind``, ``obs_pos``, ``target_mask`` (one entry per token), the token offsets
where timesteps and episodes start, and image patches with their positions, plus ``meta.json``
(name, domain, source kind, tokenizer fingerprint, source version, counts). It is written to a
temp folder and renamed into place, reused while both fingerprints match, validated on every
load, and rebuilt when stale or damaged. What goes into a shard is decided in
``opengato.batches.sources``; windows over shards live in ``opengato.batches.windows``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np

from opengato.files import atomic_path
from opengato.kinds import Kind
from opengato.tokens.seq import TokenSeq
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

SHARD_FORMAT = 3  # bump when the shard layout or the tokenisation of a source changes
# 2: meta.json records vocab_size, so loading can check the token ids
PACKED_KINDS = ("text", "qa")  # sources whose windows may cross document boundaries

SourceKind = Literal["control", "text", "qa", "captions"]


def tokenizer_fingerprint(config: TokenizerConfig) -> str:
    """A short hash of everything that changes the tokens: the config's settings and the sha256
    of the text model's bytes, the built-in default's included (it is trained on the running
    Python's docs, so it can differ between machines); not where the text model's file lives."""
    from opengato.tokens.text import text_model_sha256

    settings = {k: v for k, v in asdict(config).items() if k != "text_model"}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(
        f"text-model-sha256-{text_model_sha256(config.text_model, config.text_vocab_size)}".encode()
    )
    h.update(f"shard-format-{SHARD_FORMAT}".encode())
    return h.hexdigest()[:16]


class ShardError(ValueError):
    """A token shard on disk is incomplete, truncated or inconsistent; rebuilding it fixes it."""


# The dtype of each array file, as write_shard saves it.
_DTYPES = dict(ids=np.int32, kind=np.uint8, obs_pos=np.int16, target_mask=np.bool_,
               timestep_starts=np.int64, episode_starts=np.int64, patch_starts=np.int64,
               patches=np.uint8, patch_pos=np.uint8)  # fmt: skip
_TOKEN_ARRAYS = ("ids", "kind", "obs_pos", "target_mask")  # one entry per token
_SCAN_CHUNK = 1 << 24  # entries per read when scanning a mapped array's values


class Shard:
    """One tokenised dataset, memory-mapped from its folder.

    Token arrays (length N): ``ids`` int32, ``kind`` uint8, ``obs_pos`` int16, ``target_mask`` bool.
    ``timestep_starts`` int64[S] (token offsets, sorted), ``episode_starts`` int64[E + 1] (the last
    entry is N), ``patch_starts`` int64[S] (index of the first patch at or after each timestep
    start), ``patches`` uint8[P, p, p, 3], ``patch_pos`` uint8[P, 4].

    Loading validates the folder (files present and readable, lengths agreeing with each other
    and with ``meta.json``, token ids inside the vocabulary) and raises :class:`ShardError`
    naming the file and the problem, rather than failing later inside mmap or an embedding.
    """

    ARRAYS = ("ids", "kind", "obs_pos", "target_mask", "timestep_starts", "episode_starts",
              "patch_starts", "patches", "patch_pos")  # fmt: skip

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a token shard (no meta.json)")
        try:
            self.meta: dict = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{meta_file}: not valid JSON ({e})") from e
        for name in self.ARRAYS:
            setattr(self, name, _load_array(self.path / f"{name}.npy"))
        self.name: str = self.meta["name"]
        self.domain: str = self.meta["domain"]
        self.source_kind: SourceKind = self.meta["source_kind"]
        self.packed = self.source_kind in PACKED_KINDS
        # Small index arrays are read into memory; the token arrays stay mapped.
        self.timestep_starts = np.asarray(self.timestep_starts)
        self.episode_starts = np.asarray(self.episode_starts)
        self.patch_starts = np.asarray(self.patch_starts)
        self._validate()
        # Cheap from the in-memory index: the timestep (document, caption pair) ends where the
        # next starts, and every episode start is a timestep start.
        self.max_timestep_len = int(np.diff(self.timestep_starts, append=self.num_tokens).max())

    @property
    def num_tokens(self) -> int:
        return int(self.episode_starts[-1])

    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts) - 1

    def __repr__(self) -> str:
        return (f"Shard({self.name!r}, {self.num_episodes} episodes, {self.num_tokens} tokens, "
                f"{len(self.patches)} patches)")  # fmt: skip

    def _fail(self, name: str, problem: str) -> ShardError:
        where = self.path / (name if name == "meta.json" else f"{name}.npy")
        return ShardError(f"damaged token shard: {where}: {problem}")

    def _validate(self) -> None:
        """Raise ShardError unless the arrays agree with each other and with meta.json."""
        for name, dtype in _DTYPES.items():
            have = getattr(self, name).dtype
            if have != dtype:
                raise self._fail(name, f"dtype {have}, expected {np.dtype(dtype)}")
        self._validate_index()
        self._validate_lengths()
        self._validate_values()

    def _validate_index(self) -> None:
        """The episode and timestep offsets: sorted, starting at 0, inside the token range."""
        es, ts, ps = self.episode_starts, self.timestep_starts, self.patch_starts
        if len(es) < 2 or es[0] != 0 or (np.diff(es) <= 0).any():
            raise self._fail("episode_starts", "not an increasing list of offsets from 0")
        if len(ts) == 0 or ts[0] != 0 or (np.diff(ts) <= 0).any() or ts[-1] >= es[-1]:
            raise self._fail("timestep_starts", f"not increasing offsets in [0, {es[-1]})")
        if len(ps) != len(ts):
            raise self._fail("patch_starts", f"{len(ps)} entries for {len(ts)} timesteps")
        if len(ps) and (ps[0] < 0 or (np.diff(ps) < 0).any() or ps[-1] > len(self.patches)):
            raise self._fail("patch_starts", f"not sorted offsets in [0, {len(self.patches)}]")

    def _validate_lengths(self) -> None:
        """Each array's length against meta.json's counts (a truncated write shows here)."""
        expected = {
            "num_tokens": (self.num_tokens, *_TOKEN_ARRAYS),
            "num_episodes": (self.num_episodes,),
            "num_timesteps": (len(self.timestep_starts), "timestep_starts"),
            "num_patches": (len(self.patches), "patches", "patch_pos"),
        }
        for key, (derived, *names) in expected.items():
            if key not in self.meta:
                raise self._fail("meta.json", f"no {key!r}")
            want = self.meta[key]
            if derived != want:
                raise self._fail(names[0] if names else "episode_starts",
                                 f"gives {key}={derived} but meta.json says {want}")  # fmt: skip
            for name in names:
                if len(getattr(self, name)) != want:
                    raise self._fail(name, f"{len(getattr(self, name))} entries, meta.json says "
                                           f"{key}={want}")  # fmt: skip

    def _validate_values(self) -> None:
        """Token ids inside the vocabulary (when meta.json records it) and valid kinds: a bad id
        would otherwise surface mid-training as an embedding's ``index out of range``."""
        vocab = self.meta.get("vocab_size")
        if vocab is not None:
            bad = _first_outside(self.ids, 0, int(vocab))
            if bad is not None:
                raise self._fail("ids", f"token id {int(self.ids[bad])} at offset {bad} is "
                                        f"outside the vocabulary [0, {vocab})")  # fmt: skip
        bad = _first_outside(self.kind, 0, len(Kind))
        if bad is not None:
            raise self._fail("kind", f"kind {int(self.kind[bad])} at offset {bad} is not a Kind")


def _load_array(file: Path) -> np.ndarray:
    """``file`` memory-mapped as a plain ndarray (slicing it skips np.memmap's Python overhead);
    a missing, truncated or garbled file raises ShardError naming it."""
    if not file.is_file():
        raise ShardError(f"damaged token shard: {file}: missing")
    try:
        return np.load(file, mmap_mode="r").view(np.ndarray)
    except (OSError, ValueError, EOFError) as e:  # "mmap length is greater than file size", ...
        raise ShardError(
            f"damaged token shard: {file}: unreadable ({file.stat().st_size} bytes; truncated or "
            f"corrupted?): {e}"
        ) from e


def _first_outside(arr: np.ndarray, lo: int, hi: int) -> int | None:
    """The first index whose value is outside ``[lo, hi)``, or None; reads ``arr`` a chunk at a
    time so a large mapped array never needs a full copy in memory."""
    for at in range(0, len(arr), _SCAN_CHUNK):
        chunk = arr[at : at + _SCAN_CHUNK]
        if chunk.min() < lo or chunk.max() >= hi:
            return at + int(np.argmax((chunk < lo) | (chunk >= hi)))
    return None


def check_fits(shards: Iterable[Shard], context_len: int) -> None:
    """Refuse a context shorter than a whole timestep of a (non-packed) dataset.

    A window starts on a timestep, and its targets (the actions of a control timestep, the
    caption of an image) come at the timestep's end: a timestep longer than the context would
    have them cut off in every window, training on nothing from that dataset without a word."""
    too_long = [(s.name, s.max_timestep_len) for s in shards
                if not s.packed and s.max_timestep_len > context_len]  # fmt: skip
    if not too_long:
        return
    longest = max(n for _, n in too_long)
    which = ", ".join(f"{name} ({n} tokens)" for name, n in too_long)
    raise ValueError(
        f"the longest timestep of {which} does not fit the context of {context_len} tokens, so "
        f"its action (or caption) tokens would never be trained on; pass --context-len "
        f"{1 << (longest - 1).bit_length()} (at least {longest})"
    )


def write_shard(path: str | Path, episodes: Iterable[TokenSeq], meta: dict) -> Shard:
    """Concatenate tokenised episodes into a shard folder at ``path``, atomically.

    The arrays are written into a temp folder beside ``path`` which then replaces it, so a crash
    leaves either the old shard or the new one, never a half-written one. Put ``vocab_size`` in
    ``meta`` to have every load check the token ids against it."""
    path = Path(path)
    eps = [e for e in episodes if len(e)]
    if not eps:
        raise ValueError(f"dataset {meta.get('name')!r} has no non-empty episodes to tokenise")
    seq = TokenSeq.concat(eps)
    lengths = np.array([len(e) for e in eps], np.int64)
    episode_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Every episode starts a timestep, whatever the tokenizer reported.
    ts = np.union1d(seq.timestep_starts.astype(np.int64), episode_starts[:-1])
    is_image = seq.kind == Kind.IMAGE
    patch_cum = np.concatenate([[0], np.cumsum(is_image)]).astype(np.int64)
    if patch_cum[-1] != len(seq.patches):
        raise ValueError(
            f"{meta.get('name')}: {patch_cum[-1]} image tokens but {len(seq.patches)} patches"
        )
    arrays = dict(
        ids=seq.ids.astype(np.int32), kind=seq.kind.astype(np.uint8),
        obs_pos=seq.obs_pos.astype(np.int16), target_mask=seq.target_mask.astype(bool),
        timestep_starts=ts, episode_starts=episode_starts, patch_starts=patch_cum[ts],
        patches=seq.patches.astype(np.uint8), patch_pos=seq.patch_pos.astype(np.uint8),
    )  # fmt: skip
    meta = {
        **meta,
        "format": SHARD_FORMAT,
        "num_tokens": int(len(seq)),
        "num_episodes": len(eps),
        "num_timesteps": int(len(ts)),
        "num_patches": int(len(seq.patches)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return Shard(path)


def ensure_shard(
    path: str | Path,
    *,
    name: str,
    domain: str,
    source_kind: SourceKind,
    tokenizer_config: TokenizerConfig,
    source_version: str,
    produce: Callable[[], tuple[list[TokenSeq], int | None]],
    log: Callable[[str], None] = print,
) -> tuple[Shard, bool]:
    """The shard at ``path``, built with ``produce()`` unless an up-to-date one exists.

    ``produce() -> (episodes, val_episodes)``: the tokenised episodes, and how many at the end
    are held out for validation (None: the ``Split``'s fraction decides).

    Up to date means the same shard format, tokenizer fingerprint and source version, and files
    that pass :class:`Shard`'s validation: a damaged shard is rebuilt, with a note to ``log``.
    Returns ``(shard, rebuilt)``."""
    path = Path(path)
    want = shard_meta(name, domain, source_kind, tokenizer_config, source_version)
    if meta_matches(path, want):
        try:
            return Shard(path), False
        except ShardError as err:
            log(f"rebuilding {name}'s token shard: {err}")
    episodes, val_episodes = produce()
    return write_shard(path, episodes, {**want, "val_episodes": val_episodes}), True


def shard_meta(
    name: str, domain: str, source_kind: SourceKind, tokenizer_config: TokenizerConfig,
    source_version: str,
) -> dict:  # fmt: skip
    """What a shard's meta.json records about where its tokens come from."""
    from opengato.tokens.text import text_model_sha256

    return {
        "name": name,
        "domain": domain,
        "source_kind": source_kind,
        "tokenizer": tokenizer_fingerprint(tokenizer_config),
        "tokenizer_config": asdict(tokenizer_config),
        "source_version": source_version,
        "vocab_size": Tokenizer(tokenizer_config).vocab_size,  # lets every load check the ids
        "text_model_sha256": text_model_sha256(
            tokenizer_config.text_model, tokenizer_config.text_vocab_size
        ),  # also inside the fingerprint; here so a reader can match a shard to a checkpoint
    }


def meta_matches(path: Path, want: dict) -> bool:
    """Whether the shard at ``path`` was written by this format from the same tokenizer and
    source version (its files are checked separately, on load)."""
    try:
        have = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):  # absent, unreadable or not JSON: build it
        return False
    keys = ("name", "source_kind", "tokenizer", "source_version")
    return have.get("format") == SHARD_FORMAT and all(have.get(k) == want[k] for k in keys)
