"""Minari in and out: a Minari dataset that opengato did not write, as a task; and where other
tools find the datasets opengato writes (docs/your-own-env.md, "Minari in and out").

In: `register_minari_task("mine/CartPole", "~/data/cartpole-expert-v0")` registers a task whose
demonstrations are that dataset (a folder, or a dataset id under `$MINARI_DATASETS_PATH` or
`~/.minari/datasets`), read where it lies (`Task.dataset`). Training tokenises its episodes with
the spaces the dataset records, so any dataset whose spaces the tokenizer supports trains
without its environment; evaluating needs the environment: the one the dataset records
(Minari's `recover_environment`), or `make_env`. Its reference scores are the dataset's
`ref_min_score` / `ref_max_score` when it records them (`save_reference_scores` writes them
into the scores table).

Out: a dataset `opengato collect` writes is a plain Minari dataset (HDF5) in a Minari datasets
folder, `<data root>/minari`: with `MINARI_DATASETS_PATH` pointing there,
`minari.load_dataset("opengato/classic-CartPole-v1-v0")` reads it, as does any tool built on
Minari. Our own `opengato.json` beside Minari's files adds the seeds and successes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gymnasium as gym

from opengato.data.root import DatasetError
from opengato.data.scores import save_scores
from opengato.tasks import Task, get_task, register_task


def find_minari_dataset(dataset: str | Path) -> Path:
    """The folder of a Minari dataset: `dataset` itself if it is one (holding `data/`), else
    the dataset id `dataset` under `$MINARI_DATASETS_PATH` or `~/.minari/datasets`."""
    roots = [os.environ.get("MINARI_DATASETS_PATH"), "~/.minari/datasets"]
    candidates = [Path(dataset)] + [Path(r) / dataset for r in roots if r]
    for path in (c.expanduser().absolute() for c in candidates):
        if (path / "data" / "metadata.json").is_file():
            return path
    raise DatasetError(
        f"no Minari dataset {str(dataset)!r}: looked for data/metadata.json in "
        + ", ".join(str(c.expanduser()) for c in candidates)
    )


def dataset_metadata(path: Path) -> dict:
    """Minari's `metadata.json` of the dataset folder `path`."""
    file = path / "data" / "metadata.json"
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {file}: {e}") from e


def register_minari_task(
    name: str,
    dataset: str | Path,
    make_env: Callable[..., gym.Env] | None = None,
    *,
    max_episode_steps: int | None = None,
    success_key: str | None = None,
    metric: str = "return",
    overwrite: bool = False,
) -> Task:
    """Register task `name` (`suite/Env`) whose demonstrations are the Minari dataset `dataset`
    (see `find_minari_dataset`). `make_env(render_mode=None)` makes its env for evaluation;
    default, the env the dataset records. `max_episode_steps` defaults to the recorded env's
    limit, else 1000."""
    path = find_minari_dataset(dataset)
    meta = dataset_metadata(path)
    env_spec = json.loads(meta["env_spec"]) if meta.get("env_spec") else {}
    steps = max_episode_steps or env_spec.get("max_episode_steps") or 1000
    task = Task(
        name=name,
        domain=name.split("/")[0],
        make_env=make_env or partial(recorded_env, str(path), name),
        make_expert=None,
        max_episode_steps=steps,
        success_key=success_key,
        expert_name=meta.get("algorithm_name") or "",
        metric=metric,
        dataset=str(path),
    )
    return register_task(task, overwrite=overwrite)


def recorded_env(path: str, task_name: str, render_mode: str | None = None) -> gym.Env:
    """The env a Minari dataset records (its env spec), for evaluating task `task_name`."""
    from minari import MinariDataset

    dataset = MinariDataset(Path(path) / "data")
    if dataset.spec.env_spec is None:
        raise DatasetError(
            f"task {task_name}: its Minari dataset {path} records no environment, so it can be "
            "trained on but not evaluated; register it with make_env=... to evaluate it"
        )
    return dataset.recover_environment(render_mode=render_mode)


def save_reference_scores(task_name: str, data_dir: str | Path | None = None) -> dict:
    """Write a task's row of the data root's scores table (what `opengato eval` normalises
    with) from its Minari dataset's `ref_max_score` (expert) and `ref_min_score` (random), and
    return it; DatasetError when the dataset records neither."""
    task = get_task(task_name)
    if not task.dataset:
        raise ValueError(f"{task_name} has no Minari dataset of its own (register_minari_task)")
    meta = dataset_metadata(Path(task.dataset))
    if meta.get("ref_max_score") is None or meta.get("ref_min_score") is None:
        raise DatasetError(
            f"{task_name}: its Minari dataset records no ref_min_score / ref_max_score; write "
            "its expert and random scores with opengato.data.scores.save_scores"
        )
    episodes = meta.get("num_episodes_average_score")  # what Minari averaged each over
    row = {"expert": float(meta["ref_max_score"]), "random": float(meta["ref_min_score"]),
           "metric": task.metric, "expert_episodes": episodes, "random_episodes": episodes}  # fmt: skip
    save_scores(data_dir, {task_name: row})
    return row
