"""The MuJoCo suite and its trained experts: spaces, the numpy actor's loader, the tokenizer on
the new spaces, and a few-hundred-step `opengato train-expert` smoke run."""

import json
import sys
from dataclasses import asdict

import numpy as np
import pytest
from safetensors.numpy import save_file

from opengato.experts.actor import ActorSpec, load_actor, save_actor
from opengato.experts.mujoco import MUJOCO_ENVS, make_mujoco
from opengato.tasks import list_tasks
from opengato.tokens.codecs import mu_law_encode
from opengato.tokens.tokenizer import Tokenizer


def _spec(sizes: list[int], act_dim: int = 1) -> ActorSpec:
    return ActorSpec(
        task="mujoco/InvertedPendulum-v5",
        sizes=sizes,
        action_low=[-3.0] * act_dim,
        action_high=[3.0] * act_dim,
    )


def _weights(sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        (rng.normal(size=(o, i)).astype(np.float32), np.zeros(o, np.float32))
        for i, o in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def test_actor_round_trip_and_bounds(tmp_path):
    path = tmp_path / "a.safetensors"
    save_actor(path, _spec([4, 8, 1]), _weights([4, 8, 1]))
    actor = load_actor(path, make_mujoco("InvertedPendulum-v5"))
    for x in np.random.default_rng(1).normal(scale=10, size=(20, 4)):
        a = actor(x)
        assert a.shape == (1,) and a.dtype == np.float32 and -3 <= a[0] <= 3


def test_loader_refuses_a_tensor_of_the_wrong_shape(tmp_path):
    path = tmp_path / "bad.safetensors"
    spec = _spec([4, 8, 1])
    tensors = {f"layers.{i}.{k}": v for i, wb in enumerate(_weights([4, 8, 1])) for k, v in zip(("weight", "bias"), wb, strict=True)}  # fmt: skip
    tensors["layers.1.weight"] = np.zeros((1, 9), np.float32)
    save_file(tensors, str(path), metadata={"opengato.actor": json.dumps(asdict(spec))})
    with pytest.raises(
        ValueError, match=r"bad\.safetensors.*'layers\.1\.weight'.*\(1, 9\).*\(1, 8\)"
    ):
        load_actor(path)


def test_loader_refuses_an_actor_for_other_spaces(tmp_path):
    path = tmp_path / "other.safetensors"
    save_actor(path, _spec([5, 8, 1]), _weights([5, 8, 1]))  # 5 inputs; the env observes 4
    with pytest.raises(
        ValueError, match=r"other\.safetensors.*'layers\.0\.weight'.*\(8, 5\).*\(8, 4\)"
    ):
        load_actor(path, make_mujoco("InvertedPendulum-v5"))
    with pytest.raises(ValueError, match="not an opengato actor"):
        save_file({"x": np.zeros(1, np.float32)}, str(path))
        load_actor(path)


def test_shipped_experts_act_inside_their_spaces():
    from opengato.tasks import get_task

    names = list_tasks("mujoco")
    if not names:
        pytest.skip("no MuJoCo expert weights ship in this checkout")
    for name in names:
        task = get_task(name)
        env = task.make_env()
        expert = task.make_expert(env)
        obs, _ = env.reset(seed=0)
        expert.reset()
        for _ in range(10):
            assert env.observation_space.contains(obs)
            action = expert.act(obs)
            assert env.action_space.contains(action)
            obs, *_ = env.step(action)


def _assert_round_trip(tok: Tokenizer, space, x: np.ndarray) -> None:
    x = np.clip(np.asarray(x, space.dtype), -256, 256)  # mu-law's range (M = 256)
    ids = tok.tokenize_action(space, x)  # observations share this codec (obs_pos aside)
    y = tok.detokenize(space, ids)
    companded = not (np.all(space.low >= -1) and np.all(space.high <= 1))
    fx, fy = (
        (mu_law_encode(x.astype(np.float64)), mu_law_encode(y.astype(np.float64)))
        if companded
        else (x, y)
    )
    assert np.all(np.abs(fx - fy) <= 1.0 / 1024 + 1e-6)


@pytest.mark.parametrize("env_id", MUJOCO_ENVS)
def test_tokenizer_round_trips_mujoco_spaces(env_id):
    tok = Tokenizer()
    env = make_mujoco(env_id)
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(3):
        action = env.action_space.sample()
        _assert_round_trip(tok, env.observation_space, obs)
        _assert_round_trip(tok, env.action_space, action)
        obs, *_ = env.step(action)


def test_train_expert_smoke(tmp_path):
    pytest.importorskip("stable_baselines3")
    from opengato.experts.train import TrainExpertConfig, run_train_expert

    cfg = TrainExpertConfig(
        "mujoco/InvertedPendulum-v5", steps=200, out_dir=tmp_path, eval_episodes=2
    )
    row = run_train_expert(cfg)
    actor = load_actor(
        tmp_path / "InvertedPendulum-v5.safetensors", make_mujoco("InvertedPendulum-v5")
    )
    assert actor.spec.steps == 200 and actor.spec.algo == "sac"
    assert (tmp_path / "InvertedPendulum-v5.json").exists() and row["expert_mean"] > 0


def test_train_expert_without_the_extra_says_how_to_install(monkeypatch):
    from opengato.experts import train

    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[experts\]'"):
        train._import_sb3()
