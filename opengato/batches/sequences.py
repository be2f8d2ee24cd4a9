"""Sources, training windows, prompts, the dataset mixture and batches (docs/method.md §4).

Each dataset is tokenised once into a *shard* (``opengato.batches.shards``: flat, memory-mapped arrays
on disk); this module decides what each source's episodes are and draws training sequences.

Training sequences are windows of L tokens that start on a timestep boundary inside one episode
(packed with other episodes' starts, or padded, at the end); 25% of control sequences get a prompt from another episode of the same task
(half its end, half a uniform window), never counted in the loss. A :class:`Mixture` draws the
dataset of each sequence by weight and turns windows into a :class:`~opengato.model.gato.GatoBatch`.

Sources and how they become "episodes":

- control task: one Minari episode is one episode (``Tokenizer.tokenize_episode``).
- ``text``: one document is one episode, documents are *packed*: a window starts at a document
  start and may run on into the following documents (separated by end-of-text), so short
  documents do not waste the window on padding.
- ``qa``: a pair is formatted as ``"Question: {q}\\nAnswer: {a}"`` + end-of-text and packed like
  text. Decision: the question tokens are *not* in the loss (only the answer is a target), so the
  model learns to answer rather than to ask; the question still conditions the answer.
- ``captions``: 5 (image, caption) pairs concatenated are one episode (docs/method.md §4), each
  window cropped or padded to L.

Every rank draws its windows from ``numpy.random.default_rng([seed, rank, step])``, so a resumed
run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from opengato.batches.shards import Shard, SourceKind, check_fits, ensure_shard
from opengato.kinds import Kind
from opengato.tokens.tokenizer import (
    TokenizeError,
    Tokenizer,
    TokenSeq,
    normalize_patches,
)

_PAD, _IMAGE = int(Kind.PAD), int(Kind.IMAGE)
_TEXT, _DISCRETE, _CONTINUOUS = int(Kind.TEXT), int(Kind.DISCRETE), int(Kind.CONTINUOUS)
CAPTIONS_PER_EPISODE = 5

# Default weight of each *domain* (its share of sequences, split evenly among its datasets).
# Control suites get 1 each; the paper gives vision-language and text roughly 15% together.
DEFAULT_DOMAIN_WEIGHTS: dict[str, float] = {"text": 0.25, "qa": 0.1, "captions": 0.25}
DEFAULT_CONTROL_DOMAIN_WEIGHT = 1.0

# ---------------------------------------------------------------------------------------------
# Sources: what to tokenise, and where it comes from


@dataclass(frozen=True)
class Source:
    """A dataset to train on: a control task (``classic/CartPole-v1``) or a corpus
    (``text/python-docs``, ``text/qa``, ``vision/scenes``, ``vision/photos``)."""

    name: str
    domain: str
    kind: SourceKind

    @staticmethod
    def of(name: str) -> Source:
        from opengato.tasks import CORPORA

        if name in CORPORA:
            kind, domain = CORPORA[name]
            return Source(name, domain, kind)
        return Source(name, name.split("/")[0], "control")


def resolve_sources(spec: str | list[str] | tuple[str, ...]) -> list[Source]:
    """The sources of a `--tasks` spec (the grammar of `tasks.select`): control tasks first,
    then corpora, order kept."""
    from opengato.tasks import select

    control, corpora = select(spec)
    names = [*control, *corpora]
    if not names:
        raise ValueError(f"no datasets selected by {spec!r}")
    return [Source.of(n) for n in names]


def _dir_version(*paths: Path) -> str:
    """A fingerprint of files (relative path, size, mtime) under the given paths."""
    h = hashlib.sha256()
    for p in paths:
        files = sorted(p.rglob("*")) if p.is_dir() else [p] if p.exists() else []
        for f in files:
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(p.parent)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _control_version(task: str, data_dir: Path) -> str:
    """The version of a task's dataset: a fingerprint of its Minari files."""
    from opengato.data import datasets

    path = datasets.minari_dir(data_dir) / datasets.dataset_id(task)
    if not path.exists():
        raise FileNotFoundError(
            f"no demonstrations for {task} under {path.parent}; run `opengato collect --tasks {task}`"
        )
    return _dir_version(path)


def _tokenize_source(
    source: Source, tokenizer: Tokenizer, data_dir: Path
) -> tuple[str, Callable[[], tuple[list[TokenSeq], int | None]]]:
    """(source version, a function producing its tokenised episodes)."""
    from opengato.data import datasets

    if source.kind == "control":
        from opengato.tasks import get_task

        version = _control_version(source.name, data_dir)
        cache: dict = {}

        def load():
            if "eps" not in cache:
                cache["eps"] = datasets.load_episodes(source.name, data_dir)
            return cache["eps"]

        def produce():
            eps = load()
            if not eps:
                raise ValueError(
                    f"no episodes for task {source.name!r} in {data_dir}; run `opengato collect`"
                )
            env = get_task(source.name).make_env()
            obs_space, act_space = env.observation_space, env.action_space
            env.close()
            seqs = []
            for i, e in enumerate(eps):
                obs = first_steps(e.observations, len(e.actions))
                try:
                    seqs.append(tokenizer.tokenize_episode(obs_space, act_space, obs, e.actions))
                except TokenizeError as err:
                    raise TokenizeError(f"{source.name}, episode {i}: {err}") from err
            return seqs, None

        return version, produce
    from opengato.data import corpora

    root = datasets.data_root(data_dir)
    file = root / (source.name + ".parquet")
    if not file.is_file():
        raise FileNotFoundError(
            f"corpus {source.name!r} not found at {file}; run `opengato collect --tasks {source.name}`"
        )
    version = _dir_version(file)
    # Held-out items come last in the shard; meta["val_episodes"] tells Split how many.
    if source.kind == "text":

        def produce():
            docs = {s: corpora.load_text(root, s) for s in ("train", "valid")}
            return [tokenizer.tokenize_text(d) for s in docs for d in docs[s]], len(docs["valid"])

        return version, produce
    if source.kind == "qa":

        def produce():
            pairs = {s: corpora.load_qa(root, s) for s in ("train", "valid")}
            seqs = [tokenize_qa(tokenizer, q, a) for s in pairs for q, a in pairs[s]]
            return seqs, len(pairs["valid"])

        return version, produce
    if source.kind == "captions":
        which = source.name.split("/", 1)[1]

        def produce():
            train = corpora.load_captions(root, "train", which)
            valid = corpora.load_captions(root, "valid", which)
            val_eps = caption_episodes(tokenizer, [(im, c) for im, c, _ in valid])
            return caption_episodes(tokenizer, [(im, c) for im, c, _ in train]) + val_eps, len(
                val_eps
            )

        return version, produce
    raise ValueError(f"unknown source kind {source.kind!r}")


def first_steps(observations, n: int):
    """The first ``n`` entries of observations with a leading time axis (arrays, dicts of them,
    lists of str): Minari stores T+1 observations for T actions; the last one has no action."""
    if isinstance(observations, dict):
        return {k: first_steps(v, n) for k, v in observations.items()}
    if isinstance(observations, tuple):
        return tuple(first_steps(v, n) for v in observations)
    return observations[:n]


def tokenize_qa(tokenizer: Tokenizer, question: str, answer: str) -> TokenSeq:
    """``"Question: {q}\\nAnswer:"`` (not in the loss) then the answer + end-of-text (in the loss)."""
    q = tokenizer.tokenize_text(f"Question: {question}\nAnswer:")
    q = TokenSeq(q.ids[:-1], q.kind[:-1], q.obs_pos[:-1], np.zeros(len(q) - 1, bool),
                 q.timestep_starts)  # fmt: skip
    seq = TokenSeq.concat([q, tokenizer.tokenize_text(answer)])
    seq.timestep_starts = seq.timestep_starts[:1]
    return seq


def caption_episodes(
    tokenizer: Tokenizer,
    items: list[tuple[np.ndarray, str]],
    per_episode: int = CAPTIONS_PER_EPISODE,
) -> list[TokenSeq]:
    """(image, caption) pairs grouped into episodes of ``per_episode`` pairs (docs/method.md §4)."""
    pairs = [tokenizer.tokenize_caption(img, cap) for img, cap in items]
    return [TokenSeq.concat(pairs[i : i + per_episode]) for i in range(0, len(pairs), per_episode)]


def build_shards(
    sources: list[Source],
    tokenizer: Tokenizer,
    data_dir: str | Path,
    cache_dir: str | Path,
    log: Callable[[str], None] = print,
) -> list[Shard]:
    """Tokenise every source into ``cache_dir/<name>`` (reusing up-to-date shards)."""
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    shards = []
    for src in sources:
        version, produce = _tokenize_source(src, tokenizer, data_dir)
        t0 = time.perf_counter()
        shard, rebuilt = ensure_shard(
            cache_dir / src.name.replace("/", "__"),
            name=src.name,
            domain=src.domain,
            kind=src.kind,
            tokenizer_config=tokenizer.config,
            source_version=version,
            produce=produce,
            log=log,
        )
        if rebuilt:
            log(f"tokenised {shard} in {time.perf_counter() - t0:.1f}s")
        shards.append(shard)
    return shards


# ---------------------------------------------------------------------------------------------
# Windows


@dataclass
class Window:
    """One training sequence of L tokens (numpy), plus where it came from.

    ``patch_tok`` int64[p] are the positions (in the window) of its ``patches`` uint8[p, 16, 16, 3].
    ``prompt_len`` tokens at the front are a prompt (never in the loss), copied from shard offset
    ``prompt_start``; the sequence proper starts at shard offset ``start``. With packing, the
    tokens after its episode's end (from ``packed_at`` on) are the starts of other episodes of
    the split instead of padding."""

    ids: np.ndarray
    kind: np.ndarray
    obs_pos: np.ndarray
    target_mask: np.ndarray
    patches: np.ndarray
    patch_pos: np.ndarray
    patch_tok: np.ndarray
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

    def episodes(self, shard: Shard) -> tuple[int, int]:
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
        self.pad_id = pad_id
        e0, e1 = split.episodes(shard)
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
        """One window: uniform over the split's timestep starts, maybe with a prompt."""
        ts = self.shard.timestep_starts
        i = int(rng.integers(self.t0, self.t1))
        episode = int(self.ts_episode[i - self.t0])
        pieces: list[tuple[int, int, int]] = []  # (start, end, timestep index of start)
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
        start = int(ts[i])
        end = min(start + self.L - n_prompt, self._segment_end(episode))
        pieces.append((start, end, i))
        main = len(pieces) - 1
        if self.pack:
            pieces += self._packing(rng, n_prompt + end - start)
        return self._assemble(pieces, n_prompt, main)

    def _packing(self, rng: np.random.Generator, used: int) -> list[tuple[int, int, int]]:
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

    def _prompt(self, rng: np.random.Generator, episode: int) -> tuple[int, int, int] | None:
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

    def _assemble(self, pieces: list[tuple[int, int, int]], n_prompt: int, main: int) -> Window:
        s, L = self.shard, self.L
        ids = np.full(L, self.pad_id, np.int32)
        kind = np.full(L, _PAD, np.uint8)
        obs_pos = np.full(L, -1, np.int16)
        mask = np.zeros(L, bool)
        patches, patch_pos, patch_tok = [], [], []
        at = 0
        for a, b, t in pieces:
            n = b - a
            ids[at : at + n] = s.ids[a:b]
            kind[at : at + n] = s.kind[a:b]
            obs_pos[at : at + n] = s.obs_pos[a:b]
            mask[at : at + n] = s.target_mask[a:b]
            img = np.flatnonzero(kind[at : at + n] == _IMAGE)
            if img.size:
                p0 = int(s.patch_starts[t])
                patches.append(s.patches[p0 : p0 + img.size])
                patch_pos.append(s.patch_pos[p0 : p0 + img.size])
                patch_tok.append(img + at)
            at += n
        mask[:n_prompt] = False  # prompts are conditioning, never targets
        p = s.patches.shape[1:] if s.patches.ndim == 4 else (16, 16, 3)
        return Window(
            ids=ids, kind=kind, obs_pos=obs_pos, target_mask=mask,
            patches=np.concatenate(patches) if patches else np.zeros((0, *p), np.uint8),
            patch_pos=np.concatenate(patch_pos) if patch_pos else np.zeros((0, 4), np.uint8),
            patch_tok=np.concatenate(patch_tok) if patch_tok else np.zeros(0, np.int64),
            source=s.name, domain=s.domain, start=pieces[main][0], prompt_len=n_prompt,
            prompt_start=pieces[0][0] if n_prompt else -1,
            packed_at=n_prompt + pieces[main][1] - pieces[main][0] if len(pieces) > main + 1 else -1,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Batches and the mixture


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

    def __post_init__(self) -> None:
        for name in ("action", "text", "observation"):
            if not (getattr(self, name) >= 0.0 and np.isfinite(getattr(self, name))):
                raise ValueError(
                    f"loss weight {name} must be finite and >= 0, got {getattr(self, name)}"
                )


def target_weights(
    kind: np.ndarray,
    obs_pos: np.ndarray,
    target_mask: np.ndarray,
    prompt_len: np.ndarray,
    weights: LossWeights,
) -> np.ndarray:
    """float32 (B, T) weight of each token of B windows as a target (0: not a target).

    ``kind``, ``obs_pos``, ``target_mask`` are (B, T), ``prompt_len`` (B,). ``target_mask`` is the tokenizer's
    mask (text data and actions, already cleared in prompts); the observation role comes from
    ``obs_pos`` and the kind, so its weight can be changed without re-tokenising."""
    action = target_mask & (obs_pos < 0) & ((kind == _DISCRETE) | (kind == _CONTINUOUS))
    text = target_mask & (obs_pos < 0) & (kind == _TEXT)
    in_prompt = np.arange(kind.shape[1]) < prompt_len[:, None]  # (B, T)
    observation = (obs_pos >= 0) & (kind != _IMAGE) & (kind != _PAD) & ~in_prompt
    w = weights.action * action + weights.text * text + weights.observation * observation
    return w.astype(np.float32)


def make_batch(windows: list[Window], loss_weights: LossWeights | None = None):
    """Stack windows into a ``GatoBatch`` of long (B, T) tensors, with ``target_weight`` float
    (B, T) from ``loss_weights`` (default: the paper's); patches normalised to float
    (Np, 3, 16, 16) with ``patch_index`` flat into B*T."""
    import torch

    from opengato.model.gato import GatoBatch

    T = len(windows[0].ids)
    arrays = {
        f: np.stack([getattr(w, f) for w in windows])
        for f in ("ids", "kind", "obs_pos", "target_mask")
    }
    weight = target_weights(arrays["kind"], arrays["obs_pos"], arrays["target_mask"],
                            np.array([w.prompt_len for w in windows]),
                            loss_weights or LossWeights())  # fmt: skip
    stack = lambda f: torch.from_numpy(arrays[f])  # noqa: E731
    has = [w for w in windows if len(w.patches)]
    if has:
        patches = normalize_patches(np.concatenate([w.patches for w in has]))
        patch_pos = np.concatenate([w.patch_pos for w in has]).astype(np.int64)
        index = np.concatenate(
            [w.patch_tok + b * T for b, w in enumerate(windows) if len(w.patches)]
        )
    else:
        p = windows[0].patches.shape[1] if windows[0].patches.ndim == 4 else 16
        patches = np.zeros((0, 3, p, p), np.float32)
        patch_pos, index = np.zeros((0, 4), np.int64), np.zeros(0, np.int64)
    return GatoBatch(
        ids=stack("ids").long(),
        kind=stack("kind").long(),
        obs_pos=stack("obs_pos").long(),
        target_weight=torch.from_numpy(weight),
        patches=torch.from_numpy(patches),
        patch_index=torch.from_numpy(index.astype(np.int64)),
        patch_pos=torch.from_numpy(patch_pos),
    )


def parse_weights(spec: str | dict[str, float] | None) -> dict[str, float]:
    """``"classic=1,babyai=1,text=0.5"`` -> dict; keys are dataset names, globs or domains."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, dict):
        return {k: float(v) for k, v in spec.items()}
    out = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"weights look like 'name=1.0,domain=0.5', got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = float(v)
    return out


def resolve_weights(shards: list[Shard], spec: str | dict[str, float] | None = None) -> np.ndarray:
    """Sampling probability of each shard.

    A key naming a dataset (exactly or by glob) sets that dataset's weight; a key naming a domain
    sets the domain's total, split evenly among its datasets. Unset domains default to
    ``DEFAULT_DOMAIN_WEIGHTS`` (control suites: ``DEFAULT_CONTROL_DOMAIN_WEIGHT``)."""
    user = parse_weights(spec)
    domains: dict[str, int] = {}
    for s in shards:
        domains[s.domain] = domains.get(s.domain, 0) + 1
    used: set[str] = set()
    w = np.zeros(len(shards))
    for i, s in enumerate(shards):
        exact = [
            k for k in user if k == s.name or (k != s.domain and fnmatch.fnmatchcase(s.name, k))
        ]
        if exact:
            w[i] = user[exact[0]]
            used.add(exact[0])
        elif s.domain in user:
            w[i] = user[s.domain] / domains[s.domain]
            used.add(s.domain)
        else:
            total = DEFAULT_DOMAIN_WEIGHTS.get(s.domain, DEFAULT_CONTROL_DOMAIN_WEIGHT)
            w[i] = total / domains[s.domain]
    if unknown := set(user) - used:
        raise ValueError(
            f"--weights names {sorted(unknown)}, which match no dataset or domain "
            f"(datasets: {', '.join(s.name for s in shards)})"
        )
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {w.tolist()}")
    return w / w.sum()


class Mixture:
    """Draws each sequence's dataset by weight, then a window from it."""

    def __init__(
        self,
        shards: list[Shard],
        context_len: int,
        weights: str | dict[str, float] | None = None,
        split: Split = Split("train"),
        prompt_fraction: float = 0.25,
        prompt_end_fraction: float = 0.5,
        prompt_len: int | None = None,
        pad_id: int = 0,
        loss_weights: LossWeights | None = None,
        pack: bool = False,
    ):
        if not shards:
            raise ValueError("the mixture has no datasets")
        check_fits(shards, context_len)  # a timestep longer than the context trains on nothing
        self.shards = shards
        self.loss_weights = loss_weights or LossWeights()
        self.probs = resolve_weights(shards, weights)
        self.samplers = [
            WindowSampler(s, context_len, split, prompt_fraction, prompt_end_fraction,
                          prompt_len, pad_id, pack)
            for s in shards
        ]  # fmt: skip

    def sample_windows(self, rng: np.random.Generator, batch_size: int) -> list[Window]:
        which = rng.choice(len(self.shards), size=batch_size, p=self.probs)
        return [self.samplers[i].sample(rng) for i in which]

    def sample_batch(self, rng: np.random.Generator, batch_size: int):
        """(GatoBatch, list of windows)."""
        windows = self.sample_windows(rng, batch_size)
        return make_batch(windows, self.loss_weights), windows


def step_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The data generator of one rank at one step: a pure function of (seed, rank, step)."""
    return np.random.default_rng([seed, rank, step])
