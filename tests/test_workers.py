"""Worker processes: the env pool steps envs by handle, keeps going when an env raises or a
worker dies, and sees tasks registered at run time."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np

from opengato.tasks import Task, register_task
from opengato.workers import EnvPool


def _reset(env, task, seed):
    return env.reset(seed=seed)[0]


def _die(env, task):
    os._exit(3)


def _raise(env, task):
    raise ValueError("broken op")


def test_env_pool_steps_by_handle_and_survives_a_dead_worker():
    register_task(Task(name="test/Cart", domain="test", make_expert=None, max_episode_steps=10,
                       make_env=lambda render_mode=None: gym.make("CartPole-v1")))  # fmt: skip
    with EnvPool(2) as pool:
        a, b = pool.new_handles(4), pool.new_handles(1)  # 4 envs: one worker; then the other
        pool.submit("open", [(h, "open", ("test/Cart", {})) for h in a + b])
        [(tag, replies)] = pool.wait()
        assert tag == "open" and all(ok for ok, _ in replies)
        assert replies[0][1][1] == gym.make("CartPole-v1").action_space
        pool.submit("reset", [(h, _reset, (7,)) for h in a + b])
        [(_, replies)] = pool.wait()
        ref = gym.make("CartPole-v1").reset(seed=7)[0]
        assert all(np.array_equal(obs, ref) for _, obs in replies)
        pool.submit("raise", [(b[0], _raise, ())])
        [(_, [(ok, error)])] = pool.wait()
        assert not ok and "broken op" in error
        pool.submit("die", [(a[0], _die, ())])
        [(_, [(ok, error)])] = pool.wait()
        assert not ok and "died (exit code 3)" in error
        pool.submit("after", [(a[1], _reset, (1,)), (b[0], _reset, (1,))])
        [(_, replies)] = pool.wait()
        assert [ok for ok, _ in replies] == [False, True]  # the dead worker's envs are lost
        c = pool.new_handles(1)  # new envs go to the worker that lives
        pool.submit("open2", [(c[0], "open", ("test/Cart", {}))])
        assert pool.wait()[0][1][0][0]
        assert pool.wait() == []  # nothing in flight


def _echo(env, task, payload):
    return payload


def test_large_messages_both_ways_do_not_deadlock():
    """A worker busy sending a large reply still takes in a large request (both pipes full)."""
    big = np.zeros(4 << 20, np.uint8)  # far above a pipe's buffer
    with EnvPool(1) as pool:
        [h] = pool.new_handles(1)
        pool.submit("open", [(h, "open", ("classic/CartPole-v1", {}))])
        pool.submit("a", [(h, _echo, (big,))])
        pool.submit("b", [(h, _echo, (big,))])  # sent while the worker sends a's reply
        done = dict(pool.wait())
        while len(done) < 3:
            done.update(pool.wait())
        assert done["b"][0][1].nbytes == big.nbytes


def test_env_pool_in_this_process():
    with EnvPool(0) as pool:
        h = pool.new_handles(2)
        pool.submit(1, [(x, "open", ("classic/CartPole-v1", {})) for x in h])
        pool.submit(2, [(x, _reset, (3,)) for x in h])
        done = dict(pool.wait())
        assert sorted(done) == [1, 2] and all(ok for ok, _ in done[2])


def test_a_gym_env_registered_at_run_time_works_in_every_kind_of_worker(tmp_path):
    """A Gymnasium id registered in this process only (not at the import of any module a worker
    imports) still makes its env in collection's workers, in `--workers` evaluation and in env
    workers: the task keeps the env's spec."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    from opengato.agent.eval_config import EvalConfig
    from opengato.agent.evaluate import run_eval
    from opengato.data.collect import CollectConfig, run_collect
    from opengato.experts.classic import CLASSIC_EXPERTS
    from opengato.tasks import register_gym_task

    gym.register("OpengatoRunTimeCart-v0", entry_point=CartPoleEnv, max_episode_steps=20)
    try:
        names = ["runtime/CartA", "runtime/CartB"]
        for name in names:
            register_gym_task(name, "OpengatoRunTimeCart-v0", CLASSIC_EXPERTS["CartPole-v1"])
    finally:
        gym.registry.pop("OpengatoRunTimeCart-v0")  # as in a fresh worker: the id is unknown
    data = str(tmp_path / "data")
    summary = run_collect(CollectConfig(tasks="runtime", episodes=2, random_episodes=2,
                                        data_dir=data, workers=2))  # fmt: skip
    assert [summary["tasks"][n]["kept"] for n in names] == [2, 2]
    for workers in ({"workers": 2}, {"env_workers": 2}):
        out = tmp_path / "eval.json"
        cfg = EvalConfig(checkpoint="uniform", tasks=names, episodes=2, num_envs=2,
                         data_dir=data, out=str(out), **workers)  # fmt: skip
        results = run_eval(cfg)["tasks"]
        assert [results[n].get("error") for n in names] == [None, None], workers
        assert [results[n]["n_errors"] for n in names] == [0, 0], workers
