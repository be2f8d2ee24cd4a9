"""Minari in and out: a Tuple-observation task round-trips (collect, train, eval with prompts);
a dataset that cannot be read is an error naming it and the problem; a dataset written by
Minari's own DataCollector trains and evaluates as a task; Minari reads what opengato wrote."""

from __future__ import annotations

import json
import sys
import types

import gymnasium as gym
import h5py
import numpy as np
import pytest

from opengato.agent.prompts import load_prompts
from opengato.cli import main
from opengato.data.collect import CollectConfig, run_collect
from opengato.data.episodes import dataset_id, load_episodes, minari_dir
from opengato.data.minari_io import register_minari_task, save_reference_scores
from opengato.data.root import DatasetError
from opengato.data.scores import load_scores
from opengato.experts.classic import CLASSIC_EXPERTS
from opengato.tasks import get_task, register_gym_task
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

BLACKJACK = "toy/Blackjack-v1"
TRAIN = ["--preset", "gato-tiny", "--context-len", "64", "--batch-size", "2", "--steps", "2",
         "--tokenizer.text-vocab-size", "1024", "--eval-every", "0", "--no-progress"]  # fmt: skip


class StandOnSeventeen:
    """Blackjack's textbook expert: hit below 17."""

    def __init__(self, env):
        pass

    def reset(self):
        pass

    def act(self, obs):
        return int(obs[0] < 17)


def _train_and_eval(tmp_path, task: str, data: str) -> dict:
    """`opengato train` a few steps on `task`, then `opengato eval` it with prompts."""
    run, out = tmp_path / "run", tmp_path / "eval.json"
    assert main(["train", "--tasks", task, "--data-dir", data, "--out-dir", str(run), *TRAIN]) == 0
    assert main(["eval", str(run), "--tasks", task, "--episodes", "2", "--num-envs", "2",
                 "--data-dir", data, "--out", str(out)]) == 0  # fmt: skip
    return json.loads(out.read_text())["tasks"][task]


def test_a_tuple_observation_task_round_trips(tmp_path):
    """Blackjack's observation is a Tuple of three Discretes: collected, it reads back as one,
    trains, and prompts evaluation."""
    register_gym_task(BLACKJACK, "Blackjack-v1", expert=StandOnSeventeen, max_episode_steps=20)
    data = str(tmp_path / "data")
    run_collect(CollectConfig(BLACKJACK, episodes=20, random_episodes=10, data_dir=data,
                              workers=1))  # fmt: skip
    episodes = load_episodes(BLACKJACK, data)
    space = get_task(BLACKJACK).make_env().observation_space
    assert episodes and all(isinstance(e.observations, tuple) for e in episodes)
    assert all(space.contains(tuple(int(x[0]) for x in e.observations)) for e in episodes)
    result = _train_and_eval(tmp_path, BLACKJACK, data)
    assert "error" not in result and result["n_errors"] == 0 and result["prompts_available"] > 0


def _collect_blackjack(tmp_path) -> str:
    register_gym_task(BLACKJACK, "Blackjack-v1", expert=StandOnSeventeen, max_episode_steps=20)
    data = str(tmp_path / "data")
    run_collect(CollectConfig(BLACKJACK, episodes=4, random_episodes=2, data_dir=data, workers=1))
    return data


def test_a_dataset_that_does_not_decode_is_named_with_its_problem(tmp_path, capsys):
    """A Tuple stored as one array (not a group per entry) makes Minari's decoder fail on a
    bare `assert`: the error names the dataset, the episode and where it failed."""
    data = _collect_blackjack(tmp_path)
    file = minari_dir(data) / dataset_id(BLACKJACK) / "data" / "main_data.hdf5"
    with h5py.File(file, "a") as f:
        group = f["episode_0"]
        stacked = np.stack([group["observations"][f"_index_{i}"][()] for i in range(3)], 1)
        del group["observations"]
        group["observations"] = stacked
    with pytest.raises(DatasetError) as e:
        load_episodes(BLACKJACK, data)
    message = str(e.value)
    assert f"episode 0 of Minari dataset '{BLACKJACK}' at" in message
    assert "AssertionError at hdf5_storage.py" in message and "Tuple(Discrete(32)" in message
    code = main(["train", "--tasks", BLACKJACK, "--data-dir", data, "--out-dir",
                 str(tmp_path / "run"), *TRAIN])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "DatasetError: cannot read episode 0 of Minari dataset" in err


def test_episodes_whose_lengths_disagree_are_named(tmp_path):
    data = _collect_blackjack(tmp_path)
    file = minari_dir(data) / dataset_id(BLACKJACK) / "data" / "main_data.hdf5"
    with h5py.File(file, "a") as f:
        leaf = f["episode_1"]["observations"]["_index_2"]
        values = leaf[()]
        del f["episode_1"]["observations"]["_index_2"]
        f["episode_1"]["observations"]["_index_2"] = np.concatenate([values, values])
    with pytest.raises(DatasetError, match=r"episode 1 of .*observations\[2\] holds"):
        load_episodes(BLACKJACK, data)


def test_no_demonstration_to_prompt_with_is_an_error_not_a_silent_fallback(tmp_path):
    data = _collect_blackjack(tmp_path)
    meta_file = minari_dir(data) / dataset_id(BLACKJACK) / "opengato.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "successes": [False] * len(meta["seeds"])}))
    env = get_task(BLACKJACK).make_env()
    tokenizer = Tokenizer(TokenizerConfig(text_vocab_size=1024))
    with pytest.raises(DatasetError, match="no demonstration of toy/Blackjack-v1 to prompt"):
        load_prompts(get_task(BLACKJACK), tokenizer, env.observation_space, env.action_space,
                     data, 64)  # fmt: skip


@pytest.fixture
def jax_tree_map(monkeypatch):
    """Minari's DataCollector imports jax for one function, `jax.tree_util.tree_map`; where
    jax is not installed, this is that function for the trees a DataCollector builds (dicts,
    tuples and lists of arrays, with the buffer's lists standing at the step's leaves)."""
    try:
        import jax.tree_util  # noqa: F401

        return
    except ImportError:
        pass

    def tree_map(fn, tree, *rest):
        if tree is None:
            return None
        if isinstance(tree, dict):
            return {k: tree_map(fn, tree[k], *(r[k] for r in rest)) for k in tree}
        if isinstance(tree, (tuple, list)):
            return type(tree)(tree_map(fn, t, *(r[i] for r in rest)) for i, t in enumerate(tree))
        return fn(tree, *rest)

    jax = types.ModuleType("jax")
    jax.tree_util = types.SimpleNamespace(tree_map=tree_map)
    monkeypatch.setitem(sys.modules, "jax", jax)
    monkeypatch.setitem(sys.modules, "jax.tree_util", jax.tree_util)


def test_a_dataset_from_minaris_data_collector_trains_and_evaluates(tmp_path, monkeypatch,
                                                                     jax_tree_map):  # fmt: skip
    """Minari's own DataCollector records CartPole expert episodes (and the env's spec, and
    reference scores); registered with `register_minari_task`, the dataset trains, evaluates on
    the env it records with its episodes as prompts, and normalises with its scores."""
    from minari import DataCollector

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = DataCollector(gym.make("CartPole-v1", max_episode_steps=60))
    expert = CLASSIC_EXPERTS["CartPole-v1"](env)
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(expert.act(obs))
            done = terminated or truncated
    env.create_dataset("elsewhere/cartpole/expert-v0", algorithm_name="pd-controller",
                       ref_min_score=20.0, ref_max_score=60.0)  # fmt: skip
    task = register_minari_task("ext/CartPole", "elsewhere/cartpole/expert-v0")
    assert task.max_episode_steps == 60 and task.expert_name == "pd-controller"
    data = str(tmp_path / "data")
    assert save_reference_scores(task.name, data) == load_scores(data)[task.name]
    assert len(load_episodes(task.name, data)) == 4
    result = _train_and_eval(tmp_path, task.name, data)
    assert "error" not in result and result["prompts_available"] > 0
    assert result["normalized_score"] is not None


def test_a_dataset_without_an_env_trains_and_says_why_it_cannot_evaluate(tmp_path):
    """opengato's own datasets record no env: registered elsewhere as a dataset-only task, one
    still trains (on the spaces it records) and evaluating it says what is missing."""
    data = _collect_blackjack(tmp_path)
    task = register_minari_task("ext/Blackjack", minari_dir(data) / dataset_id(BLACKJACK))
    run = tmp_path / "run"
    assert main(["train", "--tasks", task.name, "--data-dir", data, "--out-dir", str(run),
                 *TRAIN]) == 0  # fmt: skip
    with pytest.raises(DatasetError, match="records no environment, so it can be trained"):
        task.make_env()
    with pytest.raises(DatasetError, match="no Minari dataset 'nowhere/none-v0'"):
        register_minari_task("ext/None", "nowhere/none-v0")


def test_minari_reads_what_opengato_collects(tmp_path, monkeypatch):
    import minari

    data = _collect_blackjack(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir(data)))
    dataset = minari.load_dataset(dataset_id(BLACKJACK))
    ours = load_episodes(BLACKJACK, data)
    theirs = list(dataset.iterate_episodes())
    assert [list(e.actions) for e in theirs] == [list(e.actions) for e in ours]
    assert dataset.observation_space == get_task(BLACKJACK).make_env().observation_space
