"""Training windows over a shard: timestep-aligned, with prompts, packed (docs/method.md §4).

A window is L tokens that start on a timestep boundary inside one episode; 25% of control
windows get a prompt from another episode of the same task (half its end, half a uniform
window), never a target. Where the episode ends before the window does, the window is packed
with the starts of other episodes of the split (or padded, without packing). Text and QA
shards are *packed* sources: their windows run on into the following documents. A text window
starts at any token of its split, not only where a document starts (documents run to 15,000
tokens, so windows from their starts alone left three quarters of `text/python-docs` unread at
a context of 512); a QA window starts where its question does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from opengato.batches.shards import Shard
from opengato.kinds import Kind

Piece = tuple[int, int, int]  # (start, end) shard offsets, and the timestep index of start


@dataclass
class Window:
    """One training sequence of L tokens (numpy, laid out as a ``TokenSeq``), plus where it came
    from.

    ``patches`` uint8[p, 16, 16, 3] are the pixels of its IMAGE tokens in order. ``prompt_len``
    tokens at the front are a prompt (never a target), copied from shard offset
    ``prompt_start``; the sequence proper starts at shard offset ``start``. With packing, the
    tokens after its episode's end (from ``packed_at`` on) are the starts of other episodes of
    the split instead of padding."""

    ids: np.ndarray
    kind: np.ndarray
    obs_pos: np.ndarray
    target_mask: np.ndarray
    patches: np.ndarray
    patch_pos: np.ndarray
    source: str
    domain: str
    start: int
    prompt_len: int = 0
    prompt_start: int = -1
    packed_at: int = -1


@dataclass(frozen=True)
class Split:
    """Which episodes of a shard a sampler draws from: ``train`` (all but the held-out ones),
    ``val`` (the held-out ones) or ``all``. Held out are the shard's own validation items
    (corpora have a ``valid`` split) or else the last ``val_fraction`` of its episodes (at least
    one when there are two or more). Deterministic: the same on every run and rank."""

    name: Literal["train", "val", "all"]
    val_fraction: float = 0.1

    def episode_range(self, shard: Shard) -> tuple[int, int]:
        """[first, stop) indices of the split's episodes in ``shard``."""
        E = shard.num_episodes
        n_val = shard.meta.get("val_episodes")
        if n_val is None:
            n_val = 0 if E < 2 else max(1, int(round(self.val_fraction * E)))
        if self.name == "train":
            return 0, E - n_val
        if self.name == "val":
            return E - n_val, E
        return 0, E


class WindowSampler:
    """Draws timestep-aligned windows (with prompts) from the episodes of one shard's split."""

    def __init__(
        self,
        shard: Shard,
        context_len: int,
        split: Split = Split("train"),
        prompt_fraction: float = 0.25,
        prompt_end_fraction: float = 0.5,
        prompt_len: int | None = None,
        pad_id: int = 0,
        pack: bool = False,
    ):
        self.shard, self.L = shard, context_len
        self.pack = pack
        self.prompt_fraction = prompt_fraction if shard.source_kind == "control" else 0.0
        self.prompt_end_fraction = prompt_end_fraction
        self.prompt_len = context_len // 2 if prompt_len is None else prompt_len
        # A prompt is whole timesteps of at most prompt_len tokens (none, where a timestep is
        # longer); the sequence proper gets the rest of the window, so it must leave some.
        if self.prompt_fraction > 0 and not 0 <= self.prompt_len < context_len:
            raise ValueError(
                f"--prompt-len {self.prompt_len} leaves no room in a window of {context_len} "
                f"tokens for the sequence after the prompt: pass --prompt-len between 0 and "
                f"{context_len - 1}, or --prompt-fraction 0"
            )
        self.pad_id = pad_id
        self.token_starts = shard.source_kind == "text"  # any token, not only a document's first
        e0, e1 = split.episode_range(shard)
        if e1 <= e0:
            raise ValueError(f"{shard.name}: the {split.name} split has no episodes")
        self.e0, self.e1 = e0, e1
        es, ts = shard.episode_starts, shard.timestep_starts
        self.t0, self.t1 = np.searchsorted(ts, [es[e0], es[e1]])  # timesteps of the split
        # The episode each timestep belongs to (for packed sources: the whole split).
        self.ts_episode = np.searchsorted(es, ts[self.t0 : self.t1], side="right") - 1

    def _segment_end(self, episode: int) -> int:
        es = self.shard.episode_starts
        return int(es[self.e1] if self.shard.packed else es[episode + 1])

    def sample(self, rng: np.random.Generator) -> Window:
        """One window: uniform over the split's timestep starts (its tokens, for text), maybe
        with a prompt."""
        es, ts = self.shard.episode_starts, self.shard.timestep_starts
        if self.token_starts:
            start = int(rng.integers(es[self.e0], es[self.e1]))
            i = int(np.searchsorted(ts, start, side="right")) - 1  # the timestep it lies in
            episode = int(np.searchsorted(es, start, side="right")) - 1
        else:
            i = int(rng.integers(self.t0, self.t1))
            start = int(ts[i])
            episode = int(self.ts_episode[i - self.t0])
        pieces: list[Piece] = []
        n_prompt = 0
        if (
            self.prompt_fraction > 0
            and self.e1 - self.e0 > 1
            and self.prompt_len > 0
            and rng.random() < self.prompt_fraction
        ):
            prompt = self._prompt(rng, episode)
            if prompt is not None:
                pieces.append(prompt)
                n_prompt = prompt[1] - prompt[0]
        end = min(start + self.L - n_prompt, self._segment_end(episode))
        pieces.append((start, end, i))
        main = len(pieces) - 1
        if self.pack:
            pieces += self._packing(rng, n_prompt + end - start)
        return self._copy_into_window(pieces, n_prompt, main)

    def _packing(self, rng: np.random.Generator, used: int) -> list[Piece]:
        """Pieces that fill the window's remaining ``L - used`` tokens with the starts of
        random episodes of the split, instead of padding. (A departure the paper does not
        discuss; padding wasted about a quarter of the demo's training tokens. The model attends
        across the boundary, as it does from a prompt into the sequence.)"""
        es, ts = self.shard.episode_starts, self.shard.timestep_starts
        pieces = []
        while used < self.L:
            e = int(rng.integers(self.e0, self.e1))
            a = int(es[e])
            b = min(a + self.L - used, self._segment_end(e))
            pieces.append((a, b, int(np.searchsorted(ts, a))))
            used += b - a
        return pieces

    def _prompt(self, rng: np.random.Generator, episode: int) -> Piece | None:
        """A timestep-aligned piece of another episode of the split: its end or a window."""
        other = int(rng.integers(self.e0, self.e1 - 1))
        other += other >= episode  # uniform over the split's episodes except this one
        es, ts = self.shard.episode_starts, self.shard.timestep_starts
        a, b = int(es[other]), int(es[other + 1])
        ta, tb = np.searchsorted(ts, [a, b])  # timesteps of the other episode
        P = self.prompt_len
        if rng.random() < self.prompt_end_fraction:
            # Goal conditioning: the last whole timesteps that fit in P tokens.
            j = int(np.searchsorted(ts[ta:tb], b - P)) + ta
            if j >= tb:
                return None
            return int(ts[j]), b, j
        j = int(rng.integers(ta, tb))
        start = int(ts[j])
        # End on a timestep boundary so the sequence proper starts with an observation.
        bounds = np.append(ts[j + 1 : tb], b)
        k = int(np.searchsorted(bounds, start + P, side="right")) - 1
        if k < 0:
            return None
        return start, int(bounds[k]), j

    def _copy_into_window(self, pieces: list[Piece], n_prompt: int, main: int) -> Window:
        """Copy the pieces' tokens and image patches out of the shard, end to end, into one
        window of L tokens (padded at the end); ``pieces[main]`` is the sequence proper."""
        s, L = self.shard, self.L
        ids = np.full(L, self.pad_id, np.int32)
        kind = np.full(L, Kind.PAD, np.uint8)
        obs_pos = np.full(L, -1, np.int16)
        target_mask = np.zeros(L, bool)
        patches, patch_pos = [], []
        at = 0
        for a, b, t in pieces:
            n = b - a
            ids[at : at + n] = s.ids[a:b]
            kind[at : at + n] = s.kind[a:b]
            obs_pos[at : at + n] = s.obs_pos[a:b]
            target_mask[at : at + n] = s.target_mask[a:b]
            n_img = int(np.count_nonzero(kind[at : at + n] == Kind.IMAGE))
            if n_img:
                p0 = int(s.patch_starts[t])
                patches.append(s.patches[p0 : p0 + n_img])
                patch_pos.append(s.patch_pos[p0 : p0 + n_img])
            at += n
        target_mask[:n_prompt] = False  # prompts are conditioning, never targets
        p = s.patches.shape[1:] if s.patches.ndim == 4 else (16, 16, 3)
        a, b, _ = pieces[main]
        return Window(
            ids=ids, kind=kind, obs_pos=obs_pos, target_mask=target_mask,
            patches=np.concatenate(patches) if patches else np.zeros((0, *p), np.uint8),
            patch_pos=np.concatenate(patch_pos) if patch_pos else np.zeros((0, 4), np.uint8),
            source=s.name, domain=s.domain, start=a, prompt_len=n_prompt,
            prompt_start=pieces[0][0] if n_prompt else -1,
            packed_at=n_prompt + b - a if len(pieces) > main + 1 else -1,
        )  # fmt: skip
