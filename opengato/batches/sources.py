"""Sources: the datasets to train on, and how each becomes tokenised episodes in a shard
(docs/method.md §4).

Each dataset is tokenised once into a *shard* (``opengato.batches.shards``: flat, memory-mapped
arrays on disk); this module decides what a source's episodes are:

- control task: one Minari episode is one episode (``Tokenizer.tokenize_episode``).
- ``text``: one document is one episode. Windows over text are *packed* (they may run on into
  the following documents, separated by end-of-text), so short documents do not waste the
  window on padding, and start at any token of a document (``batches.windows``).
- ``qa``: a pair is formatted as ``"Question: {q}\\nAnswer: {a}"`` + end-of-text and packed like
  text. Decision: the question tokens are *not* targets (only the answer is), so the model
  learns to answer rather than to ask; the question still conditions the answer.
- ``captions``: 5 (image, caption) pairs concatenated are one episode (docs/method.md §4).

Corpora keep their own validation items last in the shard (``val_episodes`` in its meta);
control tasks leave the split to :class:`~opengato.batches.windows.Split`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from opengato.batches.shards import Shard, SourceKind, ensure_shard, meta_matches, shard_meta
from opengato.tokens import spaces
from opengato.tokens.codecs import TokenizeError
from opengato.tokens.seq import TokenSeq
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

CAPTIONS_PER_EPISODE = 5

# produce() -> (tokenised episodes, how many at the end are held out; None: Split decides)
Produce = Callable[[], tuple[list[TokenSeq], int | None]]


@dataclass(frozen=True)
class Source:
    """A dataset to train on: a control task (``classic/CartPole-v1``) or a corpus
    (``text/python-docs``, ``text/qa``, ``vision/scenes``, ``vision/photos``)."""

    name: str
    domain: str
    source_kind: SourceKind

    @staticmethod
    def of(name: str) -> Source:
        from opengato.tasks import CORPORA

        if name in CORPORA:
            source_kind, domain = CORPORA[name]
            return Source(name, domain, source_kind)
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


def build_shards(
    sources: list[Source],
    tokenizer: Tokenizer,
    data_dir: str | Path,
    cache_dir: str | Path,
    log: Callable[[str], None] = print,
    workers: int = 1,
) -> list[Shard]:
    """Tokenise every source into ``cache_dir/<name>`` (reusing up-to-date shards). With
    ``workers`` other than 1 (0: one per usable core), the sources whose shards are stale are
    tokenised in that many processes first, one source a job (the suite's 156 tasks take ~1 s
    each, most of it building the task's env for its spaces); the loop below then finds them
    current and loads them."""
    from opengato.workers import usable_cores

    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    workers = workers or usable_cores()
    made = {src: _tokenize_source(src, tokenizer, data_dir) for src in sources}
    stale = [src for src in sources if not meta_matches(
        _shard_path(cache_dir, src), _meta(src, tokenizer, made[src][0]))]  # fmt: skip
    if workers > 1 and len(stale) > 1:
        _build_in_workers(stale, tokenizer, data_dir, cache_dir, min(workers, len(stale)), log)
    shards = []
    for src in sources:
        version, produce = made[src]
        t0 = time.perf_counter()
        shard, rebuilt = ensure_shard(
            _shard_path(cache_dir, src),
            name=src.name,
            domain=src.domain,
            source_kind=src.source_kind,
            tokenizer_config=tokenizer.config,
            source_version=version,
            produce=produce,
            log=log,
        )
        if rebuilt:
            log(f"tokenised {shard} in {time.perf_counter() - t0:.1f}s")
        shards.append(shard)
    return shards


def _shard_path(cache_dir: Path, src: Source) -> Path:
    return cache_dir / src.name.replace("/", "__")


def _meta(src: Source, tokenizer: Tokenizer, version: str) -> dict:
    return shard_meta(src.name, src.domain, src.source_kind, tokenizer.config, version)


def _build_in_workers(
    stale: list[Source], tokenizer: Tokenizer, data_dir: Path, cache_dir: Path, workers: int,
    log: Callable[[str], None],
) -> None:  # fmt: skip
    """Tokenise the sources `stale` in `workers` processes; log one summary line (and any
    damaged shard)."""
    from tqdm import tqdm

    from opengato.workers import worker_map

    t0 = time.perf_counter()
    # Largest first, so that no big dataset starts last and runs on alone: the 20,000 caption
    # scenes (~6 s here) and MinAtar's Freeway (42M tokens) were the last jobs in the suite's order.
    stale = sorted(stale, key=lambda src: -_bytes(_source_path(src, data_dir)))
    jobs = [(src, tokenizer.config, data_dir, cache_dir) for src in stale]
    tokens = 0
    with worker_map(workers) as run_map, tqdm(total=len(jobs), desc="tokenise") as bar:
        for name, notes, n in run_map(_build_job, jobs):
            pass_on_notes(notes, log)
            tokens += n
            bar.update()
            bar.set_postfix_str(name)
    log(f"tokenised {len(jobs)} datasets ({tokens:,} tokens) in "
        f"{time.perf_counter() - t0:.1f} s, {workers} at a time")  # fmt: skip


def pass_on_notes(notes: list[str], log: Callable[[str], None]) -> bool:
    """Log a shard job's notes but its "tokenised Shard(...)" line (e.g. a damaged shard
    rebuilt); return whether it had that line, i.e. built the shard rather than found it
    current."""
    built = False
    for note in notes:
        if note.startswith("tokenised Shard("):
            built = True
        else:
            log(note)
    return built


def _build_job(job: tuple[Source, TokenizerConfig, Path, Path]) -> tuple[str, list[str], int]:
    """Worker entry: build one source's shard; returns (name, its log lines, its tokens)."""
    src, config, data_dir, cache_dir = job
    notes: list[str] = []
    [shard] = build_shards([src], Tokenizer(config), data_dir, cache_dir, log=notes.append)
    return src.name, notes, shard.num_tokens


def shard_job(
    config: TokenizerConfig, data_dir: str | Path, cache_dir: str | Path
) -> Callable[[str], tuple[str, list[str], int]]:
    """`job(name)`: build the shard of dataset `name` (a task or a corpus) in `cache_dir` unless
    it is current; returns (name, its log lines, its tokens). A picklable job for a worker pool:
    `opengato demo` passes it to `run_collect(after=...)`, which runs it for each dataset as soon
    as that is on disk, while other tasks are still being collected. The text model is made
    here, in this process, so that the workers only read it."""
    from opengato.tokens.text import text_model_file

    text_model_file(config.text_model, config.text_vocab_size)
    return partial(_named_job, config, Path(data_dir), Path(cache_dir))


def _named_job(
    config: TokenizerConfig, data_dir: Path, cache_dir: Path, name: str
) -> tuple[str, list[str], int]:
    return _build_job((Source.of(name), config, data_dir, cache_dir))


def _tokenize_source(source: Source, tokenizer: Tokenizer, data_dir: Path) -> tuple[str, Produce]:
    """(the source's version, a function producing its tokenised episodes). The version is
    read first, so a missing dataset is reported before anything is tokenised."""
    from opengato.data.root import data_root

    if source.source_kind == "control":
        version = _control_version(source.name, data_dir)
        return version, partial(_control_episodes, source.name, tokenizer, data_dir)
    root = data_root(data_dir)
    file = _source_path(source, data_dir)
    if not file.is_file():
        raise FileNotFoundError(
            f"corpus {source.name!r} not found at {file}; run `opengato collect --tasks {source.name}`"
        )
    if source.source_kind == "text":
        produce = partial(_text_episodes, tokenizer, root)
    elif source.source_kind == "qa":
        produce = partial(_qa_episodes, tokenizer, root)
    elif source.source_kind == "captions":
        produce = partial(_caption_episodes, tokenizer, root, source.name.split("/", 1)[1])
    else:
        raise ValueError(f"unknown source kind {source.source_kind!r}")
    return _dir_version(file), produce


def _source_path(source: Source, data_dir: Path) -> Path:
    """Where a source's data lies: a task's Minari dataset folder, a corpus's parquet file."""
    from opengato.data.root import data_root

    if source.source_kind == "control":
        from opengato.data.episodes import task_dataset_dir
        from opengato.tasks import get_task

        return task_dataset_dir(get_task(source.name), data_dir)
    return data_root(data_dir) / (source.name + ".parquet")


def _bytes(path: Path) -> int:
    """Bytes of the files at `path` (a file, or a folder's files); 0 if it does not exist."""
    files = path.rglob("*") if path.is_dir() else [path] if path.exists() else []
    return sum(f.stat().st_size for f in files if f.is_file())


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
    path = _source_path(Source.of(task), data_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"no demonstrations for {task} under {path.parent}; run `opengato collect --tasks {task}`"
        )
    return _dir_version(path)


def _control_episodes(
    task: str, tokenizer: Tokenizer, data_dir: Path
) -> tuple[list[TokenSeq], None]:
    """A task's Minari episodes, tokenised with its env's spaces (a task with a `dataset` of its
    own: the dataset's, so that it trains without an env)."""
    from opengato.data.episodes import dataset_spaces, load_episodes
    from opengato.tasks import get_task

    eps = load_episodes(task, data_dir)
    if not eps:
        raise ValueError(f"no episodes for task {task!r} in {data_dir}; run `opengato collect`")
    if get_task(task).dataset:
        obs_space, act_space = dataset_spaces(task, data_dir)
    else:
        env = get_task(task).make_env()
        obs_space, act_space = env.observation_space, env.action_space
        env.close()
    seqs = []
    for i, e in enumerate(eps):
        # Minari stores T+1 observations for T actions; the last one has no action.
        obs = spaces.head(obs_space, e.observations, len(e.actions))
        try:
            seqs.append(tokenizer.tokenize_episode(obs_space, act_space, obs, e.actions))
        except TokenizeError as err:
            raise TokenizeError(f"{task}, episode {i}: {err}") from err
    return seqs, None


def _text_episodes(tokenizer: Tokenizer, root: Path) -> tuple[list[TokenSeq], int]:
    """One episode per document, the held-out (valid) ones last."""
    from opengato.data import corpora

    docs = {s: corpora.load_text(root, s) for s in ("train", "valid")}
    return [tokenizer.tokenize_text(d) for s in docs for d in docs[s]], len(docs["valid"])


def _qa_episodes(tokenizer: Tokenizer, root: Path) -> tuple[list[TokenSeq], int]:
    """One episode per question-answer pair, the held-out (valid) ones last."""
    from opengato.data import corpora

    pairs = {s: corpora.load_qa(root, s) for s in ("train", "valid")}
    return [tokenize_qa(tokenizer, q, a) for s in pairs for q, a in pairs[s]], len(pairs["valid"])


def _caption_episodes(tokenizer: Tokenizer, root: Path, which: str) -> tuple[list[TokenSeq], int]:
    """Episodes of ``CAPTIONS_PER_EPISODE`` (image, caption) pairs, the held-out ones last."""
    from opengato.data import corpora

    train, valid = (corpora.load_captions(root, s, which) for s in ("train", "valid"))
    val_eps = caption_episodes(tokenizer, [(im, c) for im, c, _ in valid])
    return caption_episodes(tokenizer, [(im, c) for im, c, _ in train]) + val_eps, len(val_eps)


def question_tokens(tokenizer: Tokenizer, question: str) -> TokenSeq:
    """``"Question: {q}\\nAnswer:"``, no target: what an answer continues, in training
    (`tokenize_qa`) and when the model answers (agent/language.py)."""
    q = tokenizer.tokenize_text(f"Question: {question}\nAnswer:")
    return TokenSeq(q.ids[:-1], q.kind[:-1], q.obs_pos[:-1], np.zeros(len(q) - 1, bool),
                    q.timestep_starts)  # fmt: skip


def tokenize_qa(tokenizer: Tokenizer, question: str, answer: str) -> TokenSeq:
    """`question_tokens` (not a target) then the answer + end-of-text (targets)."""
    seq = TokenSeq.concat([question_tokens(tokenizer, question), tokenizer.tokenize_text(answer)])
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
