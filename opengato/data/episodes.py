"""Episodes on disk: each task's demonstrations as one Minari dataset under the data root.

Datasets are read by path, so a user's own `MINARI_DATASETS_PATH` is never read or changed
(writing points it at a temporary folder for the duration of Minari's call, then restores it).
Besides Minari's files, each dataset folder holds our `opengato.json`: how and from which
seeds it was collected (data/collect.py), read back by `read_collection_meta`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from opengato.data.root import DatasetError, data_root
from opengato.files import replace_dir
from opengato.tasks import Task, get_task
from opengato.tokens import spaces as space_ops

DATASET_NAMESPACE = "opengato"


def minari_dir(data_dir: str | Path | None = None) -> Path:
    """Where our Minari datasets live: `<data root>/minari`."""
    return data_root(data_dir) / "minari"


def dataset_id(task_name: str) -> str:
    """Minari id of a task's demonstrations: `babyai/GoToLocal` -> `opengato/babyai-GoToLocal-v0`."""
    return f"{DATASET_NAMESPACE}/{task_name.replace('/', '-')}-v0"


def task_dataset_dir(task: Task, data_dir: str | Path | None = None) -> Path:
    """The folder of a task's Minari dataset: its own `Task.dataset` if it names one, else
    where `opengato collect` writes it under the data root."""
    if task.dataset:
        return Path(task.dataset).expanduser().absolute()
    return minari_dir(data_dir) / dataset_id(task.name)


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


# --------------------------------------------------------------------------- writing


def read_collection_meta(task_name: str, data_dir: str | Path | None = None) -> dict | None:
    """Our metadata of a collected task (generator hash, seeds, ...), or None if absent."""
    path = minari_dir(data_dir) / dataset_id(task_name) / "opengato.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def collected_by_other_code(task_name: str, data_dir: str | Path | None = None) -> bool:
    """Whether the task's dataset (where its reference scores were measured) records another
    generator hash than the installed code and packages give (`generator_hash`); a task with a
    dataset of its own records none and is not checked. Builds the env once (~0.1 s for
    Meta-World)."""
    from opengato.data.generator import generator_hash
    from opengato.tasks import get_task

    meta = read_collection_meta(task_name, data_dir)
    return meta is not None and meta.get("generator_hash") != generator_hash(get_task(task_name))


def write_minari(
    task: Task, episodes: list[Episode], data_dir: Path, meta: dict, overwrite: bool = True
) -> Path:
    """Write episodes as Minari dataset `dataset_id(task.name)`, atomically: built under a
    temporary root, then renamed into place. Returns the dataset folder."""
    import minari

    root = minari_dir(data_dir)
    final = root / dataset_id(task.name)
    tmp_root = root / f".tmp-{os.getpid()}-{time.monotonic_ns()}"
    env = task.make_env()
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    buffers = [_episode_buffer(i, e, obs_space, act_space) for i, e in enumerate(episodes)]
    # Minari writes under $MINARI_DATASETS_PATH and takes no argument for it: point it at the
    # temporary root for this call only, and give the user's own value back afterwards.
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_root)
    try:
        minari.create_dataset_from_buffers(
            dataset_id(task.name),
            buffers,
            env=None,
            observation_space=obs_space,
            action_space=act_space,
            algorithm_name=task.expert_name or "unknown",
            author="opengato",
            description=f"opengato demonstrations of {task.name} by {task.expert_name}",
            jpeg_encoding=False,
        )
        built = tmp_root / dataset_id(task.name)
        (built / "opengato.json").write_text(json.dumps(meta, indent=1))
        if final.exists() and not overwrite:
            raise DatasetError(f"{final} exists (pass overwrite=True)")
        final.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(built, final)  # Minari chose where it is built: move the folder into place
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
    return final


def _episode_buffer(i: int, e: Episode, obs_space: gym.Space, act_space: gym.Space) -> Any:
    """Minari's buffer of episode `e`: every leaf of the observations and actions as a list."""
    from minari.data_collector import EpisodeBuffer

    def as_list(_leaf: space_ops.Leaf, value: Any) -> list:
        return list(value)

    return EpisodeBuffer(
        id=i,
        seed=e.seed,
        observations=space_ops.map_leaves(obs_space, e.observations, as_list),
        actions=space_ops.map_leaves(act_space, e.actions, as_list),
        rewards=list(e.rewards),
        terminations=[False] * (len(e) - 1) + [e.terminated],
        truncations=[False] * (len(e) - 1) + [e.truncated],
    )


def dataset_damage(path: Path, meta: dict) -> str | None:
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


# --------------------------------------------------------------------------- reading


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
        path = task_dataset_dir(task, data_dir)
        if not path.exists() and task.dataset:
            raise DatasetError(f"task {task.name}'s Minari dataset {path} does not exist")
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

    Anything that cannot be read (a corrupt or foreign file, an episode whose arrays do not have
    the layout of the dataset's spaces) raises DatasetError naming the dataset, the episode and
    the problem.
    """
    from minari import MinariDataset

    root = data_root(data_dir)
    path, task_name = _resolve_dataset(name, root)
    meta: dict = {}
    if (path.parent / "opengato.json").exists():
        with contextlib.suppress(json.JSONDecodeError):
            meta = json.loads((path.parent / "opengato.json").read_text())
    where = f"Minari dataset {name!r} at {path}"
    files = ", ".join(str(p) for p in sorted(path.iterdir())) if path.is_dir() else path
    try:
        dataset = MinariDataset(path)
        episodes = iter(dataset.iterate_episodes())
    except Exception as e:  # h5py/arrow/json errors all mean the same thing to the user
        raise DatasetError(f"cannot open {where} ({files}): {_describe(e)}") from e
    spaces = (dataset.observation_space, dataset.action_space)
    seeds = meta.get("seeds") or [None] * dataset.total_episodes
    successes = meta.get("successes") or [None] * dataset.total_episodes
    for i in range(dataset.total_episodes):
        try:
            ep = next(episodes)
        except Exception as e:
            layout = (
                f". Its stored arrays do not have the layout of its observation space "
                f"{spaces[0]} and action space {spaces[1]}; collect it again"
                if isinstance(e, (AssertionError, KeyError))  # Minari's decoder walking a space
                else ""
            )
            raise DatasetError(
                f"cannot read episode {i} of {where} ({files}): {_describe(e)}{layout}"
            ) from e
        problem = _layout_problem(ep, *spaces)
        if problem:
            raise DatasetError(f"episode {i} of {where}: {problem}; collect it again")
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


def _layout_problem(ep: Any, obs_space: gym.Space, act_space: gym.Space) -> str | None:
    """What is wrong with the structure of a read episode, or None: its observations and
    actions must nest like their spaces, with T+1 observations and T actions on every leaf."""
    steps = len(ep.rewards)
    for what, space, value, n in (("observations", obs_space, ep.observations, steps + 1),
                                  ("actions", act_space, ep.actions, steps)):  # fmt: skip
        try:
            space_ops.check(space, value, what)
            for leaf in space_ops.leaves(space, what):
                length = len(space_ops.get(value, leaf.keys, what))
                if length != n:
                    return f"{leaf.path} holds {length} entries for {steps} steps (expected {n})"
        except (space_ops.SpaceError, TypeError) as e:
            return f"{e} (space {space})"
    return None


def _describe(e: BaseException) -> str:
    """`Type: message`; for an exception without a message (a bare `assert` in a library),
    where it was raised instead."""
    text = " ".join(str(e).split())
    if text:
        return f"{type(e).__name__}: {text}"
    frame = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__} at {Path(frame.filename).name}:{frame.lineno} ({frame.line})"


def dataset_spaces(name: str, data_dir: str | Path | None = None) -> tuple[gym.Space, gym.Space]:
    """(observation space, action space) recorded in a dataset (named as in `iter_episodes`)."""
    from minari import MinariDataset

    path, _ = _resolve_dataset(name, data_root(data_dir))
    try:
        dataset = MinariDataset(path)
        return dataset.observation_space, dataset.action_space
    except Exception as e:
        raise DatasetError(f"cannot open Minari dataset {name!r} at {path}: {_describe(e)}") from e


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
