# ruff: noqa: F811  (pytest fixtures imported from test_evaluate are parameters here)
"""Evaluation with one model and many tasks at once (env workers, concurrent and grouped tasks):
the same episodes as task after task, and failures that stay contained."""

from __future__ import annotations

import gymnasium as gym
import pytest
from test_evaluate import (  # noqa: F401  (setup and broken_task are fixtures)
    TASKS,
    NaNEnv,
    broken_task,
    cfg_for,
    setup,
    strip_times,
)

from opengato.agent.evaluate import run_eval
from opengato.tasks import Task, register_task


def episodes_of(res: dict) -> dict:
    """Every task's per-episode records (seed, return, length, success, error)."""
    return {t: r.get("episodes", r.get("error")) for t, r in res["tasks"].items()}


def test_env_workers_and_concurrent_tasks_change_no_result(setup):
    """Envs stepped in worker processes, several tasks at once, every batch in flight: the
    same per-episode records, aggregates and GIF as task after task in this process."""
    kw = dict(tasks=TASKS, episodes=3, record=4)  # 2 batches per task (2 + 1 episodes)
    base = run_eval(cfg_for(setup, "seq.json", **kw))
    assert all(r["n_errors"] == 0 for r in base["tasks"].values())
    for i, extra in enumerate([dict(env_workers=2, concurrent_tasks=2),
                               dict(env_workers=0, concurrent_tasks=2),
                               dict(env_workers=2, concurrent_tasks=1)]):  # fmt: skip
        res = run_eval(cfg_for(setup, f"conc{i}.json", **kw, **extra))
        assert episodes_of(res) == episodes_of(base), extra
        assert list(res["tasks"]) == list(base["tasks"])  # in the order of --tasks
        a, b = strip_times(res), strip_times(base)
        for r in (a, b):
            for k in ("out", "env_workers", "concurrent_tasks"):
                r["config"].pop(k)
        assert a == b
        root = setup[0]
        assert all((root / r["gif"]).is_file() for r in res["tasks"].values())
    sampled = dict(kw, sample="temperature", record=0)
    res = run_eval(cfg_for(setup, "ts.json", **sampled, env_workers=2, concurrent_tasks=2))
    assert episodes_of(res) == episodes_of(run_eval(cfg_for(setup, "ts0.json", **sampled)))


def test_failed_episodes_with_env_workers(setup, broken_task):
    """Env exceptions and non-finite observations lose their episodes, an env that cannot be
    made loses its task, in env workers as in this process."""
    register_task(Task(name="test/NaN", domain="test",
                       make_env=lambda seed=None, render_mode=None: NaNEnv(gym.make("CartPole-v1")),
                       make_expert=None, max_episode_steps=30))  # fmt: skip
    register_task(Task(name="test/Unmakeable", domain="test", make_env=_unmakeable,
                       make_expert=None, max_episode_steps=30))  # fmt: skip
    tasks = [broken_task, "test/NaN", "test/Unmakeable"]
    kw = dict(tasks=tasks, episodes=4, prompt=False)
    base = run_eval(cfg_for(setup, "fail0.json", **kw))
    res = run_eval(cfg_for(setup, "fail1.json", **kw, env_workers=2, concurrent_tasks=3))
    assert episodes_of(res)[broken_task] == episodes_of(base)[broken_task]
    assert episodes_of(res)["test/NaN"] == episodes_of(base)["test/NaN"]
    assert res["tasks"][broken_task]["n_errors"] == res["tasks"]["test/NaN"]["n_errors"] == 2
    assert "no such simulator" in res["tasks"]["test/Unmakeable"]["error"]


def _unmakeable(render_mode=None):
    raise RuntimeError("no such simulator")


def test_resume_with_env_workers(setup, monkeypatch):
    """--resume keeps finished tasks whatever the worker options were, and the concurrent path
    runs only the missing ones."""
    import opengato.agent.evaluate as ev

    run_eval(cfg_for(setup, "rc.json", tasks=TASKS[:1], episodes=2))
    ran = []
    real = ev.evaluate_concurrently
    monkeypatch.setattr(ev, "evaluate_concurrently",
                        lambda todo, *a, **k: ran.append(list(todo)) or real(todo, *a, **k))  # fmt: skip
    res = run_eval(cfg_for(setup, "rc.json", tasks=TASKS, episodes=2, resume=True,
                           env_workers=1, concurrent_tasks=2))  # fmt: skip
    assert ran == [TASKS[1:]] and list(res["tasks"]) == TASKS


def test_worker_options_that_cannot_run_together_are_refused(setup):
    with pytest.raises(ValueError, match="choose one"):
        run_eval(cfg_for(setup, "w.json", tasks=TASKS, workers=2, env_workers=2))
    with pytest.raises(ValueError, match="concurrent-tasks"):
        run_eval(cfg_for(setup, "w.json", tasks=TASKS, concurrent_tasks=0))


def test_grouped_tasks_share_a_policy(setup, monkeypatch):
    """--group-tasks: tasks of a domain with the same spaces play batch b as one batch (one
    policy), a task with other spaces apart; on this CPU the episodes are the same as task by
    task (grouping changes only which rows share a forward pass)."""
    import opengato.agent.concurrent as concurrent

    for name, env_id in [("test/CartA", "CartPole-v1"), ("test/CartB", "CartPole-v1"),
                         ("test/Pend", "Pendulum-v1")]:  # fmt: skip
        register_task(Task(name=name, domain="test", make_expert=None, max_episode_steps=40,
                           make_env=lambda render_mode=None, e=env_id: gym.make(e)))  # fmt: skip
    tasks = ["test/CartA", "test/Pend", "test/CartB"]
    kw = dict(tasks=tasks, episodes=3, prompt=False)
    base = run_eval(cfg_for(setup, "g0.json", **kw))
    sizes = []
    real = concurrent.make_policy
    monkeypatch.setattr(concurrent, "make_policy",
                        lambda a, o, s, n, c: sizes.append(n) or real(a, o, s, n, c))  # fmt: skip
    res = run_eval(cfg_for(setup, "g1.json", **kw, env_workers=1, concurrent_tasks=3,
                           group_tasks=3))  # fmt: skip
    assert sorted(sizes) == [2, 2, 2, 4]  # batch 0 of both carts, their batch 1, Pendulum's 2
    assert episodes_of(res) == episodes_of(base)


def test_mixed_spaces_share_a_policy(setup, monkeypatch):
    """--mix-spaces: tasks of any spaces (a discrete action, one continuous token, two) play
    batch b as one batch through one policy for envs of several spaces; the episodes are the
    same as task by task."""
    import opengato.agent.concurrent as concurrent

    for name, env_id in [("test/MixCart", "CartPole-v1"), ("test/MixPend", "Pendulum-v1"),
                         ("test/MixReach", "Reacher-v5")]:  # fmt: skip
        register_task(Task(name=name, domain=name, make_expert=None, max_episode_steps=30,
                           make_env=lambda render_mode=None, e=env_id: gym.make(e)))  # fmt: skip
    kw = dict(tasks=["test/MixCart", "test/MixPend", "test/MixReach"], episodes=3, prompt=False)
    base = run_eval(cfg_for(setup, "m0.json", **kw))
    groups = []
    real = concurrent.make_policy
    monkeypatch.setattr(concurrent, "make_policy",
                        lambda *a: groups.append(a[5:] and a[5]) or real(*a))  # fmt: skip
    res = run_eval(cfg_for(setup, "m1.json", **kw, env_workers=1, concurrent_tasks=3,
                           group_tasks=3, mix_spaces=True))  # fmt: skip
    assert groups == [[[0, 1], [2, 3], [4, 5]], [[0], [1], [2]]]  # batch 0 of each, then 1
    assert episodes_of(res) == episodes_of(base)
    with pytest.raises(ValueError, match="mix-spaces"):
        run_eval(cfg_for(setup, "m2.json", **kw, concurrent_tasks=3, mix_spaces=True))
    uniform = dict(kw, checkpoint="uniform")  # no forwards to share: each task's spaces apart
    res = run_eval(cfg_for(setup, "m3.json", **uniform, concurrent_tasks=3, group_tasks=3,
                           mix_spaces=True))  # fmt: skip
    assert episodes_of(res) == episodes_of(run_eval(cfg_for(setup, "m4.json", **uniform)))


def test_tasks_start_longest_first_and_free_their_room_when_their_episodes_end(setup, monkeypatch):
    """Grouping 2 tasks at a time: the longest task starts first, with the next longest; the
    short one's room goes to the third task as soon as its own episodes end, while the long one
    plays on (it used to wait for the whole group); the episodes are those of task by task."""
    import opengato.agent.concurrent as concurrent

    for name, limit in [("test/Short", 5), ("test/Next", 5), ("test/Long", 60)]:
        register_task(Task(name=name, domain="test", make_expert=None, max_episode_steps=limit,
                           make_env=lambda render_mode=None: gym.make("Pendulum-v1")))  # fmt: skip
    tasks = ["test/Short", "test/Next", "test/Long"]
    kw = dict(tasks=tasks, episodes=2, prompt=False)
    base = run_eval(cfg_for(setup, "lf0.json", **kw))
    events = []
    real_start, real_result = concurrent._Evaluation.start, concurrent.task_result
    monkeypatch.setattr(concurrent._Evaluation, "start",
                        lambda self: events.append(("start", list(self.waiting))) or real_start(self))  # fmt: skip
    monkeypatch.setattr(concurrent, "task_result",
                        lambda task, *a: events.append(("end", task.name)) or real_result(task, *a))  # fmt: skip
    res = run_eval(cfg_for(setup, "lf1.json", **kw, concurrent_tasks=2, group_tasks=2))
    assert events == [("start", ["test/Long", "test/Short", "test/Next"]), ("end", "test/Short"),
                      ("start", ["test/Next"]), ("end", "test/Next"), ("end", "test/Long")]  # fmt: skip
    assert episodes_of(res) == episodes_of(base)
    assert [e["length"] for e in res["tasks"]["test/Long"]["episodes"]] == [60, 60]


class SlowEnv(gym.Wrapper):
    """Pendulum that takes 10 ms a step (a simulator slower than the model)."""

    def step(self, action):
        import time

        time.sleep(0.01)
        return self.env.step(action)


def _register_timed_tasks() -> None:
    """test/Quick1 and test/Quick2 (3 steps an episode), test/Slow (100 slow steps: 2 s for
    its 2 episodes in one process)."""
    for name, limit, slow in [("test/Quick1", 3, False), ("test/Quick2", 3, False),
                              ("test/Slow", 100, True)]:  # fmt: skip
        make = (lambda render_mode=None: SlowEnv(gym.make("Pendulum-v1"))) if slow else (
            lambda render_mode=None: gym.make("Pendulum-v1"))  # fmt: skip
        register_task(Task(name=name, domain="test", make_expert=None, max_episode_steps=limit,
                           make_env=make))  # fmt: skip


def test_max_minutes_stops_the_tasks_still_playing_and_resume_finishes_them(setup):
    """--max-minutes with concurrent tasks: past it the slow task stops mid-episode and is left
    out (named in `unfinished` and a warning); the quick ones, done by then, keep their results;
    --resume without the limit evaluates the one left, as if never stopped."""
    _register_timed_tasks()
    kw = dict(tasks=["test/Quick1", "test/Slow", "test/Quick2"], episodes=2, prompt=False,
              concurrent_tasks=2)  # fmt: skip
    res = run_eval(cfg_for(setup, "mm.json", **kw, max_minutes=0.01))  # 0.6 s of the Slow's 2 s
    assert res["unfinished"] == ["test/Slow"] and list(res["tasks"]) == [
        "test/Quick1",
        "test/Quick2",
    ]
    assert any("not evaluated within --max-minutes 0.01" in w for w in res["warnings"])
    assert all(len(r["episodes"]) == 2 for r in res["tasks"].values())
    resumed = run_eval(cfg_for(setup, "mm.json", **kw, resume=True))
    assert "unfinished" not in resumed and list(resumed["tasks"]) == kw["tasks"]
    assert [e["length"] for e in resumed["tasks"]["test/Slow"]["episodes"]] == [100, 100]
    whole = run_eval(cfg_for(setup, "mm1.json", **kw))
    assert episodes_of(resumed) == episodes_of(whole)


def test_max_minutes_task_after_task_is_checked_between_tasks(setup):
    """Task after task (the default path), a task that has started finishes; the next does not
    start once the limit is past."""
    _register_timed_tasks()
    res = run_eval(cfg_for(setup, "mm2.json", tasks=["test/Quick1", "test/Slow", "test/Quick2"],
                           episodes=2, prompt=False, max_minutes=0.01))  # fmt: skip
    assert list(res["tasks"]) == ["test/Quick1", "test/Slow"] and res["unfinished"] == [
        "test/Quick2"
    ]
    with pytest.raises(ValueError, match="--max-minutes must be > 0"):
        run_eval(cfg_for(setup, "mm3.json", tasks=TASKS, max_minutes=0))


class CrashEnv(gym.Wrapper):
    """CartPole whose process dies at its second step (a simulator that segfaults)."""

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.t += 1
        if self.t > 1:
            import os

            os._exit(11)
        return self.env.step(action)


def test_a_dead_env_worker_loses_its_episodes_not_the_evaluation(setup):
    # A step limit above CartPole's 500: tasks start longest first, so the crash comes first.
    register_task(Task(name="test/Crash", domain="test", make_expert=None, max_episode_steps=600,
                       make_env=lambda render_mode=None: CrashEnv(gym.make("CartPole-v1"))))  # fmt: skip
    res = run_eval(cfg_for(setup, "crash.json", tasks=["test/Crash", TASKS[0]], episodes=2,
                           prompt=False, env_workers=1))  # fmt: skip
    crash = res["tasks"]["test/Crash"]
    assert crash["n_errors"] == 2 and all("died" in e["error"] for e in crash["episodes"])
    assert "every env worker has died" in res["tasks"][TASKS[0]]["error"]


def test_eval_throughput_benchmark_at_toy_scale(tmp_path, monkeypatch):
    """benchmarks/eval_throughput.py runs the paths in fresh processes and prints its table."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import eval_throughput

    text = eval_throughput.main([
        "--tasks", TASKS[0], "--episodes", "2", "--checkpoint", "random:gato-tiny",
        "--paths", "here,grouped", "--repeats", "1", "--collect", "0", "--env-workers", "1",
        "--threads", "1", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "bench.md"),
    ])  # fmt: skip
    rows = [line for line in text.splitlines() if line.startswith("| here") or
            line.startswith("| grouped")]  # fmt: skip
    assert len(rows) == 2 and all("| yes |" in r for r in rows)
    assert (tmp_path / "bench.md").read_text() == text and (tmp_path / "bench.json").is_file()


def test_eval_forwards_bound_is_the_lock_step_arithmetic(monkeypatch):
    """benchmarks/eval_forwards.py: CartPole (500 steps, 1 token) and Pendulum (200, 1) of one
    domain but other spaces: a lane each, grouped or not (700 forwards); mixed, one lane as long
    as the longer (500)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import eval_forwards

    line = eval_forwards.main(["--tasks", ",".join(TASKS), "--group-tasks", "2"])
    # 20 envs: CartPole 500 x 20 x (4 + 2), Pendulum 200 x 20 x (3 + 2); mixed pads to CartPole's 4
    assert line.endswith(
        "one lane per task 700 (80,000); grouped 700 (80,000); mixed 500 (84,000)"
    ), line
