"""The task registry and the space conventions of every built-in suite."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from opengato.tasks import (
    DEFAULT_TASKS,
    Task,
    get_task,
    list_tasks,
    register_gym_task,
    register_task,
    resolve_tasks,
)


def test_suites_are_complete():
    assert len(list_tasks("metaworld")) == 50
    assert len(list_tasks("babyai/*")) == 90  # 96 levels minus 6 the bot cannot solve
    assert "babyai/KeyInBox" not in list_tasks("babyai")
    assert set(list_tasks("classic")) >= {"classic/CartPole-v1", "classic/LunarLander-v3"}
    assert list_tasks("metaworld-pixels")
    assert all(get_task(t) for t in DEFAULT_TASKS)


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match="classic/CartPole-v1"):
        get_task("classic/CartPole-v0")
    with pytest.raises(KeyError, match="no task matches"):
        resolve_tasks("nosuchsuite/*")


def test_resolve_globs_suites_and_names():
    names = resolve_tasks("classic/Cart*, babyai/GoToRedBall,classic")
    assert names[0] == "classic/CartPole-v1"
    assert names[1] == "babyai/GoToRedBall"
    assert len(names) == len(set(names)) == 1 + len(list_tasks("classic"))


def test_user_registration():
    class Zero:
        def __init__(self, env):
            pass

        def reset(self):
            pass

        def act(self, obs):
            return 0

    task = register_gym_task("mine/CartPole", "CartPole-v1", Zero, expert_name="zero")
    assert get_task("mine/CartPole") is task and task.max_episode_steps == 500
    with pytest.raises(ValueError, match="already registered"):
        register_task(task)
    register_task(Task("mine/data-only", "mine", lambda **k: gym.make("CartPole-v1"), None, 10))
    assert list_tasks("mine") == ["mine/CartPole", "mine/data-only"]
    # factories are called as make_env() or make_env(render_mode=...); one written for the old
    # make_env(seed=None, render_mode=None) still works, as does one taking **kwargs
    old = lambda seed=None, render_mode=None: gym.make("CartPole-v1", render_mode=render_mode)  # noqa: E731
    for make_env in (task.make_env, get_task("mine/data-only").make_env, old):
        make_env().close()
        make_env(render_mode="rgb_array").close()


def test_no_side_effects_at_import_and_headless_rendering_by_default():
    """Importing opengato and listing its tasks leaves the environment alone; a Meta-World env
    that renders defaults MuJoCo to EGL, so pixels render headless without MUJOCO_GL set."""
    import os
    import subprocess
    import sys

    code = """if True:
        import os
        import opengato.data.collect, opengato.data.corpora, opengato.tasks, opengato.workers
        from opengato.tasks import get_task, list_tasks
        assert len(list_tasks()) > 150
        assert "MUJOCO_GL" not in os.environ and "MINARI_DATASETS_PATH" not in os.environ
        env = get_task("metaworld-pixels/reach-v3").make_env()
        obs, _ = env.reset(seed=0)
        assert os.environ["MUJOCO_GL"] == "egl" and obs["image"].std() > 5
        env.close()
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "MINARI_DATASETS_PATH")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def _check(task_name: str, steps: int = 30) -> None:
    task = get_task(task_name)
    env = task.make_env()
    assert not _is_image(env.observation_space) or task_name.startswith("metaworld-pixels")
    obs, _ = env.reset(seed=3)
    expert = task.make_expert(env)
    expert.reset()
    for _ in range(steps):
        assert env.observation_space.contains(obs), (task_name, obs)
        action = expert.act(obs)
        assert env.action_space.contains(action), (task_name, action)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset(seed=4)
            expert.reset()
    env.close()


def _is_image(space) -> bool:
    if isinstance(space, spaces.Dict):
        return any(_is_image(s) for s in space.values())
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


@pytest.mark.parametrize(
    "name",
    [
        "classic/CartPole-v1",
        "classic/Pendulum-v1",
        "classic/LunarLanderContinuous-v3",
        "babyai/GoToLocal",
        "babyai/BossLevel",
        "metaworld/push-v3",
        "metaworld-pixels/reach-v3",
    ],
)
def test_observations_and_expert_actions_lie_in_spaces(name):
    _check(name, steps=10 if "pixels" in name else 60)


def test_babyai_layout():
    env = get_task("babyai/GoToRedBall").make_env()
    space = env.observation_space
    assert isinstance(space["mission"], spaces.Text)
    assert space["grid"].dtype == np.int64 and space["grid"].high.max() < 1024
    assert isinstance(env.action_space, spaces.Discrete) and env.action_space.n == 7


def test_babyai_view_is_minigrids():
    """Every level's view (suites.BabyAIObs.view, which the envs make their observations with)
    equals minigrid's own `gen_obs` at every step of a random-action episode, in which objects
    get carried (shown where the agent stands) and open doors (seen through) come into view."""
    from minigrid.minigrid_env import MiniGridEnv

    from opengato.suites import babyai_levels, make_babyai

    steps = carried = open_doors = 0
    for env_id in babyai_levels().values():
        env = make_babyai(env_id)
        base, rng = env.unwrapped, np.random.default_rng(0)
        env.reset(seed=0)
        for _ in range(80):
            env.step(int(rng.integers(0, 7)))
            ours, theirs = base.gen_obs(), MiniGridEnv.gen_obs(base)
            assert ours["image"].dtype == theirs["image"].dtype
            assert np.array_equal(ours["image"], theirs["image"]), env_id
            assert (ours["direction"], ours["mission"]) == (theirs["direction"], theirs["mission"])
            steps, carried = steps + 1, carried + (base.carrying is not None)
            grid = theirs["image"]
            open_doors += bool(((grid[..., 0] == 4) & (grid[..., 2] == 0)).any())
    assert steps == 80 * len(babyai_levels()) and carried > 100 and open_doors > 100
    copy = pickle.loads(pickle.dumps(env))  # as before the view was swapped: still picklable
    assert copy.unwrapped.gen_obs.args[0] is copy.unwrapped


@pytest.mark.parametrize(
    "level",
    ["babyai/BossLevel", "babyai/GoToImpUnlock", "babyai/UnblockPickup", "babyai/KeyCorridor"],
)
def test_babyai_bot_with_a_queue_plans_as_minigrids_own(level):
    """The expert's bot (experts/babyai.py: its search's queue a deque) against minigrid's
    BabyAIBot, on two envs of the same seed: the same action, cells seen and search counts at every
    step. UnblockPickup's plans search again with blockers; GoToImpUnlock's open locked doors."""
    from minigrid.utils.baby_ai_bot import BabyAIBot

    from opengato.experts.babyai import BabyAIExpert

    task = get_task(level)
    for seed in (0, 1):
        envs = [task.make_env(), task.make_env()]
        obs = [env.reset(seed=seed)[0] for env in envs][0]
        ours = BabyAIExpert(envs[0])
        ours.reset()
        theirs = BabyAIBot(envs[1].unwrapped)
        assert type(ours.bot) is not BabyAIBot and isinstance(ours.bot, BabyAIBot)
        for _ in range(60):
            # Ours reads the cells in view from the observation: the env's own mask.
            _, in_view = envs[0].unwrapped.gen_obs_grid()
            assert np.array_equal(obs["grid"][:, :, 0] != 0, in_view)
            action = ours.act(obs)
            assert action == int(theirs.replan())
            assert np.array_equal(ours.bot.vis_mask, theirs.vis_mask)
            assert (ours.bot.bfs_counter, ours.bot.bfs_step_counter) == (
                theirs.bfs_counter,
                theirs.bfs_step_counter,
            )
            steps = [env.step(action) for env in envs]
            obs = steps[0][0]
            if any(step[2] for step in steps):
                break
        assert ours.bot.bfs_step_counter > 100  # the search ran


def test_pixel_layout():
    env = get_task("metaworld-pixels/reach-v3").make_env()
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["proprio"].shape == (4,)
    # the table (bottom) is brighter than the sky-less background on top once flipped
    assert obs["image"].std() > 5
    env.close()


def test_metaworld_stops_after_success_and_is_seeded():
    task = get_task("metaworld/reach-v3")
    env = task.make_env()
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=7)
        expert = task.make_expert(env)
        first, steps = None, 0
        for steps in range(1, 501):
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            if info["success"] and first is None:
                first = steps
            if terminated or truncated:
                break
        runs.append((first, steps, obs.tobytes()))
    assert runs[0] == runs[1]
    assert runs[0][1] == runs[0][0] + 10


def test_metaworld_seeds_give_their_own_start_states():
    """Each seed its own goal and object placement: evaluation seeds (1,000,000 on) start where
    no demonstration did. MT1 has 50 fixed variations, so 60 collection seeds alone would
    repeat some (and did, before each seed drew its own)."""
    env = get_task("metaworld/reach-v3").make_env()
    seeds = [*range(60), *range(1_000_000, 1_000_010)]
    starts = [env.reset(seed=s)[0].tobytes() for s in seeds]
    assert len(set(starts)) == len(seeds)
    assert env.reset(seed=5)[0].tobytes() == starts[5]
    env.close()


def test_metaworld_envs_are_the_ones_gym_make_builds():
    """make_metaworld draws MT1's goals once per process and builds the env itself
    (metaworld's private `_init_each_env`): the same wrappers and the same episodes as
    gym.make("Meta-World/MT1"), the second env of a process too."""
    from opengato.suites import MetaWorldEpisode, UnboundedFloatObs, make_metaworld

    def layers(env):
        out = [type(env)]
        while isinstance(env, gym.Wrapper):
            env = env.env
            out.append(type(env))
        return out

    def episode(env, seed):
        obs, _ = env.reset(seed=seed)
        expert, trace = task.make_expert(env), [obs]
        expert.reset()
        for _ in range(40):
            obs, reward, terminated, truncated, _ = env.step(expert.act(obs))
            trace += [obs, reward, terminated, truncated]
        return trace

    task = get_task("metaworld/push-v3")
    made = gym.make("Meta-World/MT1", env_name="push-v3", seed=0, disable_env_checker=True)
    made = UnboundedFloatObs(MetaWorldEpisode(made))
    ours = [make_metaworld("push-v3", pixels=False) for _ in range(2)]
    for env in ours:
        assert layers(env) == layers(made)
    for seed in (3, 123456):
        want = episode(made, seed)
        for env in ours:
            got = episode(env, seed)
            assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(ValueError, match="not a V3 environment"):
        make_metaworld("push-v9", pixels=False)


def test_metaworld_goals_are_drawn_once_per_machine(tmp_path, monkeypatch, capsys):
    """The goals are kept on disk: a fresh process reads the draw back (no second draw), equal
    to MT1's own; a damaged file is drawn again and replaced."""
    import metaworld

    from opengato.suites import metaworld_goals

    monkeypatch.setenv("OPENGATO_CACHE", str(tmp_path))
    metaworld_goals.cache_clear()
    drawn = metaworld_goals("reach-v3")
    [path] = (tmp_path / "metaworld-goals").iterdir()
    assert "reach-v3-metaworld" in path.name
    fresh = metaworld.MT1("reach-v3", seed=0).train_tasks
    assert [g.data for g in drawn] == [g.data for g in fresh]

    def no_draw(*args, **kwargs):
        raise AssertionError("drew the goals again")

    metaworld_goals.cache_clear()  # as a new process would start
    with monkeypatch.context() as m:
        m.setattr(metaworld, "MT1", no_draw)
        assert [g.data for g in metaworld_goals("reach-v3")] == [g.data for g in fresh]

    path.write_bytes(b"not a pickle")
    metaworld_goals.cache_clear()
    assert [g.data for g in metaworld_goals("reach-v3")] == [g.data for g in fresh]
    assert "unreadable" in capsys.readouterr().out
    metaworld_goals.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(metaworld, "MT1", no_draw)
        metaworld_goals("reach-v3")  # replaced by the redraw
    metaworld_goals.cache_clear()


@pytest.mark.parametrize(
    "spec",
    ["all", "default", "classic", "babyai/GoTo*", "metaworld/reach-v3,classic",
     "text", "qa", "captions", "vision", "text/*", "text/qa,classic/CartPole-v1"],
)  # fmt: skip
def test_every_verb_reads_tasks_the_same_way(spec, monkeypatch):
    """One --tasks grammar: collect, train (and the demo) and eval expand a spec alike."""
    import opengato.data.collect as collect
    from opengato.agent.eval_config import EvalConfig
    from opengato.agent.evaluate import eval_tasks, trained_tasks
    from opengato.batches.sources import resolve_sources
    from opengato.tasks import CORPORA, list_tasks, select

    control, corpora = select(spec)
    assert [s.name for s in resolve_sources(spec)] == control + corpora  # train, demo

    class Read(Exception):  # collect's own reading, stopped before anything runs
        pass

    def counts(cfg, names):
        raise Read(names)

    monkeypatch.setattr(collect, "episode_counts", counts)
    with pytest.raises(Read) as read:
        collect.run_collect(collect.CollectConfig(tasks=spec))
    assert read.value.args[0] == control
    assert trained_tasks({"train": {"tasks": spec}}) == control  # eval's default: the run's
    if control:  # eval's --tasks (a list of names)
        assert eval_tasks(EvalConfig(checkpoint="uniform", tasks=spec.split(",")), {}) == control
    if spec == "all":
        assert control == list_tasks() and corpora == list(CORPORA)
    with pytest.raises(KeyError, match="nosuch"):
        select(spec + ",nosuch/Task")
