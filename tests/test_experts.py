"""The suites with trained experts (MuJoCo, DM Control, MinAtar): spaces, the numpy actor's
loader, the tokenizer on the new spaces, and few-hundred-step `opengato train-expert` smoke
runs."""

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
from safetensors.numpy import save_file

from opengato.experts.actor import ActorSpec, load_actor, save_actor
from opengato.experts.dmc import DMC_TASKS, make_dmc
from opengato.experts.minatar import MINATAR_GAMES, MinAtarExpert, make_minatar, planes
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
    """What is saved loads back (spec and weights), and acts as the MLP it describes: relu
    between layers, then tanh scaled to the bounds (or argmax for a discrete action)."""
    path = tmp_path / "a.safetensors"
    spec, weights = _spec([4, 8, 1]), _weights([4, 8, 1])
    weights[0] = (weights[0][0], np.linspace(-1, 1, 8, dtype=np.float32))  # biases count too
    save_actor(path, spec, weights)
    actor = load_actor(path, make_mujoco("InvertedPendulum-v5"))
    assert actor.spec == spec
    for (w, b), (w2, b2) in zip(weights, actor.weights, strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)
    (w0, b0), (w1, b1) = weights
    outs = []
    for x in np.random.default_rng(1).normal(scale=10, size=(20, 4)):
        a = actor(x)
        assert a.shape == (1,) and a.dtype == np.float32 and -3 <= a[0] <= 3
        want = 3.0 * np.tanh(w1 @ np.maximum(w0 @ x.astype(np.float32) + b0, 0) + b1)
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-5)
        outs.append(float(a[0]))
    assert len(set(outs)) > 10  # not saturated everywhere
    argmax = ActorSpec(task="test", sizes=[4, 8, 3], squash="argmax")
    save_actor(path, argmax, _weights([4, 8, 3]))
    actor = load_actor(path)
    (w0, _), (w1, _) = _weights([4, 8, 3])
    for x in np.random.default_rng(2).normal(size=(20, 4)):
        assert actor(x) == int(np.argmax(w1 @ np.maximum(w0 @ x.astype(np.float32), 0)))


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


@pytest.mark.parametrize("suite", ["mujoco", "dmc", "minatar"])
def test_shipped_experts_act_inside_their_spaces(suite):
    from opengato.tasks import get_task

    names = list_tasks(suite)
    if not names:
        pytest.skip(f"no {suite} expert weights ship in this checkout")
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


def test_train_expert_smoke(tmp_path, monkeypatch):
    pytest.importorskip("stable_baselines3")
    import tempfile

    from opengato.experts.train import TrainExpertConfig, run_train_expert

    temp = tmp_path / "temp"  # SB3 left an empty SB3-<time> folder here on every run
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    cfg = TrainExpertConfig(
        "mujoco/InvertedPendulum-v5", steps=200, out_dir=tmp_path, eval_episodes=2
    )
    row = run_train_expert(cfg)
    assert list(temp.glob("SB3-*")) == []
    actor = load_actor(
        tmp_path / "InvertedPendulum-v5.safetensors", make_mujoco("InvertedPendulum-v5")
    )
    assert actor.spec.steps == 200 and actor.spec.algo == "sac"
    assert (tmp_path / "InvertedPendulum-v5.json").exists() and row["expert_mean"] > 0


@pytest.mark.parametrize("game", MINATAR_GAMES)
def test_minatar_cells_are_the_state_packed_losslessly(game):
    env = make_minatar(game)
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    channels = env.unwrapped.game.state_shape()[-1]
    tok = Tokenizer()
    for _ in range(30):
        assert env.observation_space.contains(obs) and obs.shape == (10, 10)
        state = env.unwrapped.game.state()
        assert np.array_equal(planes(obs, channels).reshape(10, 10, channels), state)
        ids = tok.tokenize_observation(env.observation_space, obs)
        assert len(ids) == 100  # one discrete token per cell, whatever the game's channels
        back = tok.detokenize(
            env.observation_space, tok.tokenize_action(env.observation_space, obs)
        )
        assert np.array_equal(back, obs)  # discrete values round-trip exactly
        obs, *_ = env.step(env.action_space.sample())


def test_minatar_episodes_are_a_function_of_the_seed():
    def rollout(seed):
        env = make_minatar("Asterix")
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for t in range(40):
            obs, *_ = env.step(t % env.action_space.n)
            out.append(obs)
        return np.stack(out)

    assert np.array_equal(rollout(5), rollout(5)) and not np.array_equal(rollout(5), rollout(6))


def test_minatar_expert_refuses_weights_for_another_game(tmp_path):
    path = tmp_path / "breakout.safetensors"
    sizes = [400, 8, 3]  # Breakout: 4 channels, 3 actions
    spec = ActorSpec(task="minatar/Breakout", sizes=sizes, squash="argmax")
    save_actor(path, spec, _weights(sizes))
    expert = MinAtarExpert(make_minatar("Breakout"), path)
    assert expert.act(make_minatar("Breakout").reset(seed=0)[0]) in range(3)
    with pytest.raises(ValueError, match=r"'layers\.0\.weight'.*\(8, 400\).*\(8, 1000\)"):
        MinAtarExpert(make_minatar("Seaquest"), path)  # 10 channels, 6 actions


def test_dmc_expert_refuses_weights_for_another_task(tmp_path):
    from opengato.experts.dmc import DmcExpert

    path = tmp_path / "reacher.safetensors"
    sizes = [6, 8, 2]  # reacher-easy: 6 observation values, 2 actions
    spec = ActorSpec(
        task="dmc/reacher-easy", sizes=sizes, action_low=[-1.0] * 2, action_high=[1.0] * 2
    )
    save_actor(path, spec, _weights(sizes))
    action = DmcExpert(make_dmc("reacher-easy"), path).act(
        make_dmc("reacher-easy").reset(seed=0)[0]
    )
    assert action.shape == (2,) and np.all(np.abs(action) <= 1)
    with pytest.raises(ValueError, match=r"'layers\.0\.weight'.*\(8, 6\).*\(8, 5\)"):
        DmcExpert(make_dmc("cartpole-balance"), path)  # 5 observation values, 1 action


def test_dm_control_leaves_deprecation_warnings_at_pythons_default():
    """Importing dm_control sets `simplefilter("always", DeprecationWarning)` process-wide; under
    NumPy 2.5 its index code then printed a warning on every physics read (a million in one
    suite collection). In a fresh interpreter, as a collection worker is, none may show."""
    code = (
        "import warnings\n"
        "from opengato.experts.dmc import make_dmc\n"
        "env = make_dmc('cartpole-balance'); env.reset(seed=0); env.step(env.action_space.sample())\n"
        "for _ in range(3):\n"
        "    warnings.warn_explicit('shape setter deprecated', DeprecationWarning, 'index.py', 368,\n"
        "                           module='dm_control.mujoco.index')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "shape setter deprecated" not in run.stderr


@pytest.mark.parametrize("name", DMC_TASKS)
def test_dmc_spaces_and_tokenizer_round_trip(name):
    tok = Tokenizer()
    env = make_dmc(name)
    obs, _ = env.reset(seed=0)
    again, _ = make_dmc(name).reset(seed=0)
    assert all(np.array_equal(obs[k], again[k]) for k in obs)  # the seed fixes the start
    env.action_space.seed(0)
    for _ in range(3):
        assert env.observation_space.contains(obs)
        action = env.action_space.sample()
        for key, space in env.observation_space.spaces.items():
            _assert_round_trip(tok, space, obs[key])
        _assert_round_trip(tok, env.action_space, action)
        obs, reward, *_ = env.step(action)
        assert isinstance(reward, float)
    env.close()


@pytest.mark.parametrize(
    ("task", "steps", "weights"),
    [("minatar/Breakout", 1024, "MinAtar-Breakout"), ("dmc/cartpole-balance", 200, "dmc-cartpole-balance")],
)  # fmt: skip
def test_train_expert_smoke_other_suites(tmp_path, task, steps, weights):
    pytest.importorskip("stable_baselines3")
    from opengato.experts.train import TrainExpertConfig, run_train_expert

    row = run_train_expert(TrainExpertConfig(task, steps=steps, out_dir=tmp_path, eval_episodes=2))
    actor = load_actor(tmp_path / f"{weights}.safetensors")
    assert actor.spec.task == task and actor.spec.steps == steps
    assert row["algo"] == ("ppo" if task.startswith("minatar") else "sac")
    assert np.isfinite(row["expert_mean"]) and np.isfinite(row["random_mean"])


def test_train_expert_refuses_an_unknown_task():
    from opengato.experts.train import parse_task

    with pytest.raises(ValueError, match="unknown minatar env 'Pong'"):
        parse_task("minatar/Pong")
    with pytest.raises(ValueError, match="no expert suite 'atari'"):
        parse_task("atari/Pong")


def test_train_expert_without_the_extra_says_how_to_install(monkeypatch):
    from opengato.experts import train

    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[experts\]'"):
        train._import_sb3()


def test_expert_overrides_name_real_envs_and_algorithm_arguments(tmp_path):
    """Per-env overrides (rl-zoo's Swimmer gamma) reach the SB3 algorithm and the JSON row."""
    sb3 = pytest.importorskip("stable_baselines3")
    import inspect

    from opengato.experts.train import SUITES, TrainExpertConfig, run_train_expert

    for suite in SUITES.values():
        algo = {"sac": sb3.SAC, "ppo": sb3.PPO}[suite.algo]
        for env, kwargs in suite.overrides.items():
            assert env in suite.envs
            assert set(kwargs) <= set(inspect.signature(algo).parameters)
    row = run_train_expert(
        TrainExpertConfig("mujoco/Swimmer-v5", steps=200, out_dir=tmp_path, eval_episodes=1)
    )
    assert row["overrides"] == {"gamma": 0.9999} and np.isfinite(row["expert_mean"])


def test_point_mass_scripted_expert_reaches_the_target():
    """dmc/point_mass-easy's PD controller: return far above a random policy's on a held-out seed
    (200 steps; the reward is zero until the mass is within the target's radius)."""
    from opengato.tasks import get_task

    task = get_task("dmc/point_mass-easy")
    assert task.expert_name.startswith("scripted")
    env = task.make_env()
    expert, rng = task.make_expert(env), np.random.default_rng(0)
    totals = []
    for policy in (expert.act, lambda obs: rng.uniform(-1, 1, 2).astype(np.float32)):
        obs, _ = env.reset(seed=1_000_000)
        total = 0.0
        for _ in range(200):
            obs, reward, *_ = env.step(policy(obs))
            total += reward
        totals.append(total)
    assert totals[0] > 50 and totals[0] > 10 * totals[1] + 1
    with pytest.raises(ValueError, match="point_mass"):
        task.make_expert(get_task("dmc/cartpole-balance").make_env())
