"""Episodes on disk: expert demonstrations as Minari datasets, the scores table, collection.

Layout of the data root (`DEFAULT_DATA_DIR`, or `$OPENGATO_DATA`, or an argument)::

    <root>/minari/opengato/<suite>-<Env>-v0/   one Minari dataset per task
        data/main_data.hdf5, data/metadata.json  (Minari's own files)
        opengato.json                            (generator hash, seeds, returns, successes)
    <root>/scores.json                           expert and random score per task
    <root>/text/*.parquet, <root>/vision/*.parquet  (corpora.py)

Datasets are read by path, so a user's own `MINARI_DATASETS_PATH` is never changed (writing
points it at a temporary folder for the duration of Minari's call, then restores it).

Decisions (departures from, or readings of, the paper):
- Filtering: the paper drops episodes whose return is below 80% of the expert return. With
  negative returns (Pendulum, MountainCar, Acrobot) "80% of expert" is ill-defined, so we
  keep an episode iff `(ret - random) >= 0.8 * (expert - random)`, i.e. 80% of the way from
  the random score to the expert score. Tasks scored by success rate (Meta-World: episodes
  stop 10 steps after success, so returns of different lengths do not compare) keep an
  episode iff it succeeded.
- The expert score is the mean return (and success rate) over all collected expert episodes
  that finished, before filtering (100 by default); the random score is the mean over
  `random_episodes` (default 100) uniformly random episodes. Expert episode i uses seed
  `seed + i`, random episode i `seeds.RANDOM_SEED_START + seed + i`; evaluation uses seeds from
  `seeds.EVAL_SEED_START` on, which collection never reaches (opengato/seeds.py). Episodes that
  time out or raise count as failures and are never written.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from opengato import tasks as tasks_mod
from opengato.files import atomic_write_json
from opengato.seeds import COLLECT_SEED_START, EVAL_SEED_START, RANDOM_SEED_START
from opengato.tasks import Task, get_task

GENERATOR_VERSION = 2
"""Bump when collection changes in a way the source hash below cannot see."""

DEFAULT_DATA_DIR = Path(os.environ.get("OPENGATO_DATA", "~/.opengato/data")).expanduser()
DATASET_NAMESPACE = "opengato"
FILTER_FRACTION = 0.8


class DatasetError(RuntimeError):
    """A dataset on disk is missing, corrupt or not what was asked for."""


def data_root(data_dir: str | Path | None = None) -> Path:
    """The data root, absolute: the argument, else `$OPENGATO_DATA`, else `~/.opengato/data`.
    (Absolute because Minari joins relative dataset paths onto themselves.)"""
    if data_dir is not None:
        return Path(data_dir).expanduser().absolute()
    env = os.environ.get("OPENGATO_DATA")
    return Path(env).expanduser().absolute() if env else DEFAULT_DATA_DIR.absolute()


def minari_dir(data_dir: str | Path | None = None) -> Path:
    """Where our Minari datasets live: `<data root>/minari`."""
    return data_root(data_dir) / "minari"


def dataset_id(task_name: str) -> str:
    """Minari id of a task's demonstrations: `babyai/GoToLocal` -> `opengato/babyai-GoToLocal-v0`."""
    return f"{DATASET_NAMESPACE}/{task_name.replace('/', '-')}-v0"


_HASHES: dict[str, str] = {}


def generator_hash(task: Task) -> str:
    """Hash of what shapes a task's episodes: the version, the opengato wrappers around its
    env, the expert's module and the episode runner. A change means the task's dataset is
    stale and is collected again rather than mixed with new data; edits elsewhere (another
    suite's wrapper, docs) leave it current."""
    if task.name in _HASHES:
        return _HASHES[task.name]
    h = hashlib.sha256(f"{GENERATOR_VERSION}:{task.name}".encode())
    h.update(inspect.getsource(_run_episode).encode())
    env = task.make_env()
    layer = env
    while isinstance(layer, gym.Wrapper):
        if type(layer).__module__.startswith("opengato"):
            h.update(inspect.getsource(type(layer)).encode())
        layer = layer.env
    env.close()
    if task.make_expert is not None:
        with contextlib.suppress(TypeError, OSError):
            h.update(inspect.getsource(inspect.getmodule(task.make_expert)).encode())
    _HASHES[task.name] = h.hexdigest()[:16]
    return _HASHES[task.name]


# --------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    """One episode of T steps.

    `observations` has a leading time axis of T+1 (Minari's convention): `observations[t]`
    is what the agent saw before `actions[t]`, and `observations[T]` is the final one. For a
    Dict space it is a dict of such arrays (a Text entry is a list of T+1 strings).
    """

    observations: Any
    """Array (T+1, ...) or dict of them, matching the observation space."""
    actions: np.ndarray
    """(T, ...) matching the action space."""
    rewards: np.ndarray
    """(T,) float."""
    terminated: bool = False
    truncated: bool = False
    seed: int | None = None
    success: bool | None = None
    task: str = ""

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards))

    def __len__(self) -> int:
        return len(self.rewards)


def _stack(items: list) -> Any:
    """Stack per-step observations (arrays, ints, strings or dicts of them) along time."""
    first = items[0]
    if isinstance(first, dict):
        return {k: _stack([it[k] for it in items]) for k in first}
    if isinstance(first, str):
        return list(items)
    return np.stack([np.asarray(x) for x in items])


class EpisodeTimeout(Exception):
    """Raised inside an episode that ran past its wall-clock limit."""


def _on_alarm(signum, frame):
    raise EpisodeTimeout


def _run_episode(
    task: Task, env: gym.Env, seed: int, policy: str, timeout_s: float
) -> dict[str, Any]:
    """Run one seeded episode under a wall-clock limit (SIGALRM; call from a main thread).

    `policy` is "expert" or "random". Returns a dict with the stacked episode, or with
    `error` set to the reason it was dropped (timeout, exception).
    """
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    start = time.perf_counter()
    try:
        obs, info = env.reset(seed=seed)
        if policy == "expert":
            expert = task.make_expert(env)
            expert.reset()
            act = expert.act
        else:
            env.action_space.seed(seed)

            def act(_obs):
                return env.action_space.sample()

        observations, actions, rewards = [obs], [], []
        terminated = truncated = success = False
        for _ in range(task.max_episode_steps):
            action = act(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            if task.success_key is not None:
                success = success or bool(info.get(task.success_key, False))
            if terminated or truncated:
                break
        truncated = truncated or not terminated
    except EpisodeTimeout:
        return {"seed": seed, "error": f"timeout after {timeout_s:.0f}s"}
    except Exception as e:  # an expert that raises loses the episode, not the collection
        return {"seed": seed, "error": f"{type(e).__name__}: {e}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return {
        "seed": seed,
        "error": None,
        "observations": _stack(observations),
        "actions": np.stack([np.asarray(a) for a in actions]),
        "rewards": np.asarray(rewards, np.float64),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "success": bool(success) if task.success_key is not None else None,
        "return": float(np.sum(rewards)),
        "seconds": time.perf_counter() - start,
    }


_WORKER_ENV: dict[str, gym.Env] = {}


def _episode_job(job: tuple[str, int, str, float]) -> tuple[str, str, dict]:
    """Worker entry: run (task, seed, policy, timeout); one env per task is kept per process."""
    task_name, seed, policy, timeout_s = job
    task = get_task(task_name)
    env_task = get_task(task.scores_from) if policy == "random" and task.scores_from else task
    env = _WORKER_ENV.get(env_task.name)
    if env is None:
        for other in _WORKER_ENV.values():
            with contextlib.suppress(Exception):
                other.close()
        _WORKER_ENV.clear()
        env = _WORKER_ENV[env_task.name] = env_task.make_env()
    result = _run_episode(env_task, env, seed, policy, timeout_s)
    if result["error"] is not None:  # the env may be mid-step: never reuse it
        _WORKER_ENV.pop(env_task.name, None)
        with contextlib.suppress(Exception):
            env.close()
    return task_name, policy, result


# --------------------------------------------------------------------------- scores, filter


def keep_episode(
    ret: float, expert: float, random: float, fraction: float = FILTER_FRACTION
) -> bool:
    """The paper's filter, relative to random: keep iff `ret - random >= fraction * (expert - random)`.

    >>> keep_episode(-150.0, expert=-140.0, random=-1200.0)
    True
    >>> keep_episode(-1000.0, expert=-140.0, random=-1200.0)
    False
    """
    if expert <= random:  # a degenerate expert: nothing to measure against
        return True
    return ret - random >= fraction * (expert - random)


def filter_episodes(
    episodes: list[Episode], expert: float, random: float, metric: str = "return"
) -> tuple[list[Episode], int]:
    """Drop episodes below 80% of expert (see `keep_episode`), or unsuccessful ones when
    the task is scored by success rate. Returns (kept, number dropped)."""
    if metric == "success_rate":
        kept = [e for e in episodes if e.success]
    else:
        kept = [e for e in episodes if keep_episode(e.episode_return, expert, random)]
    return kept, len(episodes) - len(kept)


def load_scores(data_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """`scores.json`: task -> {"expert", "random" (mean returns), "expert_success_rate",
    "random_success_rate", "metric", "expert_episodes", "random_episodes"}."""
    path = data_root(data_dir) / "scores.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"corrupt scores table {path}: {e}") from e


def _save_scores(data_dir: Path, updates: dict[str, dict]) -> None:
    scores = load_scores(data_dir)
    scores.update(updates)
    atomic_write_json(data_dir / "scores.json", scores, sort_keys=True)


# --------------------------------------------------------------------------- Minari I/O


def _opengato_meta_path(task_name: str, data_dir: Path) -> Path:
    return minari_dir(data_dir) / dataset_id(task_name) / "opengato.json"


def read_collection_meta(task_name: str, data_dir: str | Path | None = None) -> dict | None:
    """Our metadata of a collected task (generator hash, seeds, ...), or None if absent."""
    path = _opengato_meta_path(task_name, data_root(data_dir))
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def write_minari(
    task: Task, episodes: list[Episode], data_dir: Path, meta: dict, overwrite: bool = True
) -> Path:
    """Write episodes as Minari dataset `dataset_id(task.name)`, atomically: built under a
    temporary root, then renamed into place. Returns the dataset folder."""
    import minari
    from minari.data_collector import EpisodeBuffer

    root = minari_dir(data_dir)
    final = root / dataset_id(task.name)
    tmp_root = root / f".tmp-{os.getpid()}-{time.monotonic_ns()}"
    buffers = [
        EpisodeBuffer(
            id=i,
            seed=e.seed,
            observations=_to_buffer(e.observations),
            actions=list(e.actions),
            rewards=list(e.rewards),
            terminations=[False] * (len(e) - 1) + [e.terminated],
            truncations=[False] * (len(e) - 1) + [e.truncated],
        )
        for i, e in enumerate(episodes)
    ]
    # Minari writes under $MINARI_DATASETS_PATH and takes no argument for it: point it at the
    # temporary root for this call only, and give the user's own value back afterwards.
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_root)
    try:
        env = task.make_env()
        minari.create_dataset_from_buffers(
            dataset_id(task.name),
            buffers,
            env=None,
            observation_space=env.observation_space,
            action_space=env.action_space,
            algorithm_name=task.expert_name or "unknown",
            author="opengato",
            description=f"opengato demonstrations of {task.name} by {task.expert_name}",
            jpeg_encoding=False,
        )
        env.close()
        built = tmp_root / dataset_id(task.name)
        (built / "opengato.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            if not overwrite:
                raise DatasetError(f"{final} exists (pass overwrite=True)")
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        built.rename(final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
    return final


def _to_buffer(observations: Any) -> Any:
    if isinstance(observations, dict):
        return {k: _to_buffer(v) for k, v in observations.items()}
    return list(observations)


def _find_minari_data(path: Path) -> Path:
    """The folder holding `metadata.json` for a dataset folder or its `data/` subfolder."""
    for candidate in (path, path / "data"):
        if (candidate / "metadata.json").exists():
            return candidate
    if path.is_file():
        return _find_minari_data(path.parent)
    raise DatasetError(f"no Minari dataset at {path} (expected {path}/data/metadata.json)")


def _resolve_dataset(name: str, data_dir: Path) -> tuple[Path, str | None]:
    """A task name, a Minari dataset id or a path -> (dataset data folder, task name)."""
    if os.sep in name and Path(name).exists():
        return _find_minari_data(Path(name)), None
    with contextlib.suppress(KeyError):
        task = get_task(name)
        path = minari_dir(data_dir) / dataset_id(task.name)
        if not path.exists():
            raise DatasetError(
                f"no demonstrations for {task.name} under {path.parent}; run "
                f"`opengato collect --tasks {task.name}` first"
            )
        return _find_minari_data(path), task.name
    for root in (minari_dir(data_dir), _default_minari_root()):
        if (root / name).exists():
            return _find_minari_data(root / name), None
    raise DatasetError(
        f"{name!r} is not a task, a Minari dataset id under {minari_dir(data_dir)} or "
        f"{_default_minari_root()}, nor a path"
    )


def _default_minari_root() -> Path:
    return Path("~/.minari/datasets").expanduser()


def iter_episodes(name: str, data_dir: str | Path | None = None) -> Iterator[Episode]:
    """Episodes of a task (`classic/CartPole-v1`), any local Minari dataset id
    (`D4RL/door/human-v2`) or a dataset folder path, read one at a time.

    A corrupt or foreign file raises DatasetError naming it.
    """
    from minari import MinariDataset

    root = data_root(data_dir)
    path, task_name = _resolve_dataset(name, root)
    meta: dict = {}
    if (path.parent / "opengato.json").exists():
        with contextlib.suppress(json.JSONDecodeError):
            meta = json.loads((path.parent / "opengato.json").read_text())
    try:
        dataset = MinariDataset(path)
        seeds = meta.get("seeds") or [None] * dataset.total_episodes
        successes = meta.get("successes") or [None] * dataset.total_episodes
        for i, ep in enumerate(dataset.iterate_episodes()):
            yield Episode(
                observations=ep.observations,
                actions=np.asarray(ep.actions),
                rewards=np.asarray(ep.rewards, np.float64),
                terminated=bool(ep.terminations[-1]),
                truncated=bool(ep.truncations[-1]),
                seed=seeds[i] if i < len(seeds) else None,
                success=_success(ep, successes, i),
                task=task_name or name,
            )
    except DatasetError:
        raise
    except Exception as e:  # h5py/arrow/json errors all mean the same thing to the user
        files = ", ".join(str(p) for p in sorted(path.iterdir())) if path.is_dir() else path
        raise DatasetError(
            f"cannot read Minari dataset {name!r} at {path} ({files}): {type(e).__name__}: {e}"
        ) from e


def _success(ep: Any, successes: list, i: int) -> bool | None:
    if i < len(successes) and successes[i] is not None:
        return bool(successes[i])
    infos = getattr(ep, "infos", None) or {}
    if "success" in infos:
        return bool(np.any(infos["success"]))
    return None


def load_episodes(name: str, data_dir: str | Path | None = None) -> list[Episode]:
    """All episodes of a task, Minari dataset id or path (see `iter_episodes`)."""
    return list(iter_episodes(name, data_dir))


# --------------------------------------------------------------------------- collection


@dataclass
class CollectConfig:
    """Collect expert demonstrations, scores, text and image-caption data."""

    tasks: str = "default"
    """Comma-separated task names, globs (`babyai/*`) or suites (`classic`); `default` is a
    small demo mix (`opengato.tasks.DEFAULT_TASKS` + text and captions); `all` is everything.
    Corpora: `text/python-docs`, `text/qa`, `vision/scenes`, `vision/photos` (or `text`, `vision`)."""
    episodes: int = 100
    """Expert episodes attempted per task (before filtering); their mean is the expert score."""
    random_episodes: int = 100
    """Uniformly random episodes per task for the random score."""
    seed: int = COLLECT_SEED_START
    """Expert episode i of a task uses seed `seed + i`, random episode i `500000 + seed + i`.
    `seed + episodes` must stay below 1000000, where evaluation seeds start."""
    data_dir: str | None = None
    """Data root; default `$OPENGATO_DATA` or `~/.opengato/data`."""
    workers: int = 2
    """Worker processes (1 runs in this process)."""
    episode_timeout_s: float = 60.0
    """Wall-clock limit per episode; an episode past it is dropped and counted."""
    overwrite: bool = False
    """Collect again even when an up-to-date dataset exists."""


def _split_names(spec: str) -> tuple[list[str], list[str]]:
    """Split a task spec into (control task names, corpus names): `tasks.select`."""
    return tasks_mod.select(spec)


@dataclass
class TaskSummary:
    task: str
    kept: int = 0
    dropped: int = 0
    failed: int = 0
    expert_success_rate: float | None = None
    expert_score: float | None = None
    random_score: float | None = None
    seconds: float = 0.0
    status: str = "collected"
    reasons: list[str] = field(default_factory=list)


def _is_current(task: Task, cfg: CollectConfig, root: Path) -> bool:
    """Whether the task's dataset on disk was collected by this generator with these settings
    and its files are intact; a damaged one is collected again (with a note saying why)."""
    meta = read_collection_meta(task.name, root)
    if not (
        meta is not None
        and meta.get("generator_hash") == generator_hash(task)
        and meta.get("episodes_requested") == cfg.episodes
        and meta.get("seed") == cfg.seed
        and meta.get("random_episodes_requested") == cfg.random_episodes
    ):
        return False
    problem = _dataset_damage(minari_dir(root) / dataset_id(task.name), meta)
    if problem is not None:
        print(f"{task.name}: collecting again, the dataset on disk is damaged: {problem}")
        return False
    return True


def _dataset_damage(path: Path, meta: dict) -> str | None:
    """What is wrong with the Minari files of the collected dataset at `path`, or None.

    Cheap: opening the HDF5 file makes HDF5 compare the file's size with the size it recorded
    (so a truncated copy fails here), and the episode groups are counted, not read; the count
    must match Minari's metadata and the seeds in our `opengato.json` (`meta`)."""
    import h5py

    info_file, data_file = path / "data" / "metadata.json", path / "data" / "main_data.hdf5"
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError) as e:
        return f"{info_file} is unreadable ({e})"
    if info.get("data_format", "hdf5") != "hdf5":
        return None  # not written by us (write_minari makes HDF5); nothing cheap to check
    try:
        with h5py.File(data_file, "r") as f:
            stored = sum(1 for key in f if key.startswith("episode_"))
    except Exception as e:  # h5py raises OSError for a truncated file, others for garbage
        return f"{data_file} does not open ({type(e).__name__}: {e})"
    claims = {"metadata.json total_episodes": info.get("total_episodes")}
    if "seeds" in meta:
        claims["opengato.json seeds"] = len(meta["seeds"])
    for where, count in claims.items():
        if count != stored:
            return f"{data_file} holds {stored} episodes but {where} says {count}"
    return None


def _summary_from_disk(task: Task, root: Path) -> TaskSummary:
    meta = read_collection_meta(task.name, root) or {}
    score = load_scores(root).get(task.name, {})
    return TaskSummary(
        task.name,
        kept=len(meta.get("seeds", [])),
        dropped=meta.get("dropped_by_filter", 0),
        failed=len(meta.get("failed", [])),
        expert_success_rate=score.get("expert_success_rate"),
        expert_score=score.get("expert"),
        random_score=score.get("random"),
        status="up to date",
    )


def run_collect(cfg: CollectConfig) -> dict[str, Any]:
    """Collect every requested task (resumable, parallel, atomic per task), then the text and
    caption corpora; print a summary table. Returns {"tasks": {name: TaskSummary dict},
    "corpora": {name: count}, "seconds": total}."""
    from tqdm import tqdm

    start = time.perf_counter()
    _check_collect_config(cfg)
    root = data_root(cfg.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    minari_dir(root)
    control, corpora = _split_names(cfg.tasks)
    summaries: dict[str, TaskSummary] = {}
    todo: list[Task] = []
    for name in control:
        task = get_task(name)
        if task.make_expert is None:
            summaries[name] = TaskSummary(name, status="dataset-only")
        elif not cfg.overwrite and _is_current(task, cfg, root):
            summaries[name] = _summary_from_disk(task, root)
        else:
            todo.append(task)
    hashes = {t.name: generator_hash(t) for t in todo}  # of the code that runs the episodes
    jobs = [
        (
            t.name,
            cfg.seed + i + (RANDOM_SEED_START if policy == "random" else 0),
            policy,
            cfg.episode_timeout_s,
        )  # fmt: skip
        for t in todo
        for policy, n in (("expert", cfg.episodes), ("random", cfg.random_episodes))
        for i in range(n)
    ]
    pending = {t.name: cfg.episodes + cfg.random_episodes for t in todo}
    results: dict[str, dict[str, list]] = {t.name: {"expert": [], "random": []} for t in todo}
    clock = time.perf_counter()  # results arrive in job order: a task's time runs from the last
    with _pool(cfg.workers) as run_map, tqdm(total=len(jobs), desc="collect", unit="ep") as bar:
        for task_name, policy, result in run_map(_episode_job, jobs):
            bar.update(1)
            results[task_name][policy].append(result)
            pending[task_name] -= 1
            if pending[task_name] == 0:
                summaries[task_name] = _finish_task(
                    get_task(task_name),
                    results.pop(task_name),
                    cfg,
                    root,
                    clock,
                    hashes[task_name],
                )
                clock = time.perf_counter()
                bar.set_postfix_str(task_name)
    corpus_counts = _build_corpora(corpora, root)
    total = time.perf_counter() - start
    print(format_summary([summaries[n] for n in control], corpus_counts, total))
    return {
        "tasks": {n: asdict(summaries[n]) for n in control},
        "corpora": corpus_counts,
        "seconds": total,
    }


def _check_collect_config(cfg: CollectConfig) -> None:
    """Refuse counts and seeds that would make a demonstration share a start state with an
    evaluation episode, or leave a reference score without episodes."""
    if cfg.episodes < 1 or cfg.random_episodes < 1:
        raise ValueError(
            f"--episodes ({cfg.episodes}) and --random-episodes ({cfg.random_episodes}) must be >= 1"
        )
    if cfg.seed < 0 or cfg.seed + cfg.episodes > RANDOM_SEED_START:
        raise ValueError(
            f"expert seeds [{cfg.seed}, {cfg.seed + cfg.episodes}) must lie in "
            f"[0, {RANDOM_SEED_START}): random-policy episodes start at {RANDOM_SEED_START} and "
            f"evaluation at {EVAL_SEED_START} (opengato/seeds.py)"
        )


@contextlib.contextmanager
def _pool(workers: int):
    """Yield a `map(fn, jobs)` that runs in-process (workers <= 1) or in forked workers."""
    if workers <= 1:
        yield lambda fn, jobs: map(fn, jobs)
        return
    # fork keeps tasks registered at run time (user tasks, tests) visible in the workers
    ctx = mp.get_context("fork" if sys.platform != "win32" else "spawn")
    with ctx.Pool(workers, maxtasksperchild=None) as pool:
        yield lambda fn, jobs: pool.imap(fn, jobs, chunksize=1)


def _finish_task(
    task: Task, res: dict, cfg: CollectConfig, root: Path, t0: float, digest: str
) -> TaskSummary:
    """Score, filter and write one task's episodes; update scores.json."""
    ok = sorted((r for r in res["expert"] if r["error"] is None), key=lambda r: r["seed"])
    failed = [r for r in res["expert"] if r["error"] is not None]
    rnd = [r for r in res["random"] if r["error"] is None]
    summary = TaskSummary(task.name, failed=len(failed))
    summary.reasons = [f"seed {r['seed']}: {r['error']}" for r in failed]
    for reason in summary.reasons:
        print(f"[collect] {task.name}: dropped {reason}", file=sys.stderr)
    attempted = len(res["expert"])
    if task.success_key is not None and attempted:
        summary.expert_success_rate = sum(bool(r["success"]) for r in ok) / attempted
    summary.expert_score = float(np.mean([r["return"] for r in ok])) if ok else None
    summary.random_score = float(np.mean([r["return"] for r in rnd])) if rnd else None
    episodes = [
        Episode(
            observations=r["observations"],
            actions=r["actions"],
            rewards=r["rewards"],
            terminated=r["terminated"],
            truncated=r["truncated"],
            seed=r["seed"],
            success=r["success"],
            task=task.name,
        )
        for r in ok
    ]
    if summary.expert_score is not None and summary.random_score is not None:
        kept, dropped = filter_episodes(
            episodes, summary.expert_score, summary.random_score, task.metric
        )
    else:
        kept, dropped = episodes, 0
    summary.kept, summary.dropped = len(kept), dropped
    random_success = (
        sum(bool(r["success"]) for r in rnd) / len(rnd)
        if rnd and task.success_key is not None
        else None
    )
    if kept:
        meta = {
            "task": task.name,
            "generator_version": GENERATOR_VERSION,
            "generator_hash": digest,
            "expert": task.expert_name,
            "episodes_requested": cfg.episodes,
            "seed": cfg.seed,
            "random_episodes_requested": cfg.random_episodes,
            "random_seed": RANDOM_SEED_START + cfg.seed,
            "seeds": [e.seed for e in kept],
            "returns": [e.episode_return for e in kept],
            "successes": [e.success for e in kept],
            "dropped_by_filter": dropped,
            "failed": summary.reasons,
            "observation_convention": "observations have T+1 entries; actions, rewards T",
        }
        write_minari(task, kept, root, meta, overwrite=True)
    else:
        summary.status = "no episodes kept"
    _save_scores(
        root,
        {
            task.name: {
                "expert": summary.expert_score,
                "random": summary.random_score,
                "expert_success_rate": summary.expert_success_rate,
                "random_success_rate": random_success,
                "metric": task.metric,
                "expert_episodes": len(ok),
                "random_episodes": len(rnd),
            }
        },
    )
    summary.seconds = time.perf_counter() - t0
    return summary


def _build_corpora(names: list[str], root: Path) -> dict[str, int]:
    if not names:
        return {}
    from opengato.data import corpora

    return corpora.build(names, root)


def format_summary(rows: list[TaskSummary], corpora: dict[str, int], seconds: float) -> str:
    """The collection summary as a Markdown table."""

    def num(x: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if x is None else fmt.format(x)

    lines = [
        "| task | kept | dropped | failed | expert success | expert score | random score | s | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.kept} | {r.dropped} | {r.failed} | "
            f"{num(r.expert_success_rate, '{:.0%}')} | {num(r.expert_score, '{:.2f}')} | "
            f"{num(r.random_score, '{:.2f}')} | {r.seconds:.1f} | {r.status} |"
        )
    for name, count in corpora.items():
        lines.append(f"| {name} | {count} | | | | | | | corpus |")
    lines.append(f"\ntotal {seconds:.1f} s")
    return "\n".join(lines)
