"""Many tasks at once: `evaluate_concurrently` plays up to `cfg.concurrent_tasks` tasks together,
every batch of each in flight with a policy of its own, their envs stepped in `cfg.env_workers`
processes (`workers.EnvPool`, which also reads the prompts), while this process holds the one
model and runs one batch's forward passes as the workers step the others' envs. The lock-step
loop itself is `rollout.play_batch`, the same one `rollout.evaluate_task` drives in-process, so
the episodes are identical (tests/test_evaluate.py).

Tasks start longest first (by their step limit), and a task leaves the count of those in flight
as soon as its own episodes have ended, not when the last of its group has: a group of BabyAI
levels whose step limits run from 16 to 1,080 would otherwise hold the next group back while its
few longest episodes play on alone."""

from __future__ import annotations

import itertools
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from opengato.agent.eval_config import EvalConfig
from opengato.agent.prompts import env_prompts, prompt_source
from opengato.agent.rollout import (
    batch_size,
    episode_batches,
    make_policy,
    play_batch,
    task_result,
)
from opengato.tasks import longest_first


@dataclass
class _Run:
    """Tasks that `evaluate_concurrently` started together (one, or with `group_tasks` several
    of one domain): their episodes in batches, their envs in the pool, their batches' plays."""

    id: int
    tasks: list
    batches: dict[str, list[list[dict]]]
    """Per task, its episodes in lock-step batches (`episode_batches`)."""
    handles: dict[str, list[list[int]]]
    """Per task and batch, the pool handles of the batch's envs."""
    t0: float = field(default_factory=time.time)
    prompts: dict[str, list] = field(default_factory=dict)
    frames: dict[str, list] = field(default_factory=dict)
    plays: dict[int, _Play] = field(default_factory=dict)
    """The plays still going, by id."""
    done: set[str] = field(default_factory=set)
    """Tasks whose results went to `finish` (their episodes all ended)."""


@dataclass
class _Play:
    """One play of a run: its `play_batch`, its envs' handles, the task of each row, and the
    tasks that still have an episode going in it."""

    play: Generator
    handles: list[int]
    row_tasks: list[str]
    live: set[str]


def evaluate_concurrently(
    task_names: list[str],
    cfg: EvalConfig,
    agent,
    finish: Callable[[dict], None],
    progress: Callable[[int], Any] | None = None,
    deadline: float | None = None,
) -> list[str]:
    """Evaluate `task_names`, up to `cfg.concurrent_tasks` at a time with every batch of each
    in flight at once, envs stepped in `cfg.env_workers` processes (0: here); `finish(result)`
    gets each task's results (an `error` instead when the task fails), as tasks finish.

    This process holds `agent`'s one model: while the env workers step some batches' envs, it
    runs other batches' forward passes. Each batch has a policy of its own and plays exactly as
    under `evaluate_task`, unless `cfg.group_tasks` > 1: then batch b of up to that many tasks
    of one domain whose envs have the same spaces is one batch, with one policy and one forward
    pass a step for all of them. Tasks start longest first (`max_episode_steps`), and a task is
    finished (its envs closed, its result handed on) when its own episodes end; grouping, a
    new group starts once at least half a group's room is free. A task's `seconds` run from its
    start to its end, so they include time spent on the tasks that ran beside it.

    Past `deadline` (a time.monotonic()), no task starts and those playing stop; returns the
    tasks left unfinished, whose results never reach `finish`."""
    from opengato.workers import EnvPool

    evaluation = _Evaluation(task_names, cfg, agent, finish, progress)
    with EnvPool(cfg.env_workers) as pool:
        return evaluation.run(pool, deadline)


class _Evaluation:
    """The state of one `evaluate_concurrently`: the tasks waiting, the runs in flight, and the
    pool that steps their envs."""

    def __init__(self, task_names, cfg: EvalConfig, agent, finish, progress) -> None:
        self.cfg, self.agent, self.finish, self.progress = cfg, agent, finish, progress
        self.waiting, self.runs, self.ids = deque(longest_first(task_names)), {}, itertools.count()
        self.source = prompt_source(agent, cfg)
        self.n = batch_size(cfg)  # rows of a policy (as evaluate_task's, also for a partial batch)

    def in_flight(self) -> int:
        """Tasks started whose results are still to come."""
        return sum(len(run.tasks) - len(run.done) for run in self.runs.values())

    def room(self) -> bool:
        """Whether another task may start now (grouping: a group of at least half
        `group_tasks`, or of every waiting task when fewer), so that a group's tail does not
        fill the room a task at a time with groups of one."""
        cfg = self.cfg
        least = min(cfg.group_tasks // 2, len(self.waiting), cfg.concurrent_tasks)
        return bool(self.waiting) and cfg.concurrent_tasks - self.in_flight() >= max(1, least)

    def run(self, pool, deadline: float | None = None) -> list[str]:
        """Start tasks while there is room, and route each batch of replies to its run, until
        every task has finished or `deadline` has passed; returns the tasks left unfinished
        (their envs close with the pool)."""
        self.pool = pool
        runs = self.runs
        while self.waiting or runs:
            if deadline is not None and time.monotonic() > deadline:
                while pool.wait():  # the replies in flight, dropped (a worker blocked on a
                    pass  # full pipe would not see the pool close)
                return [t.name for run in runs.values() for t in run.tasks
                        if t.name not in run.done] + list(self.waiting)  # fmt: skip
            while self.room():
                self.start()
            done = pool.wait()
            if not done and runs:
                raise RuntimeError(f"no env ops in flight for runs {sorted(runs)}")
            for (run_id, what), replies in done:
                run = runs.get(run_id)
                if run is None:  # a close, or a run that ended
                    continue
                try:
                    if what == "open":
                        self.opened(run, replies)
                    else:
                        # An op that broke (its worker died, a render raised) loses its episode.
                        outcomes = [v if ok else {"error": v} for ok, v in replies]
                        self.advance(run, what, outcomes)
                except Exception:
                    self.end(run_id, traceback.format_exc())
                    continue
                if not run.plays:
                    self.end(run_id, None)
        return []

    def start(self) -> None:
        """Open the envs of the next waiting task (and, grouping, of others of its domain)."""
        from opengato.tasks import get_task

        cfg, waiting = self.cfg, self.waiting
        names = [waiting.popleft()]
        try:
            domain = get_task(names[0]).domain
            room = min(cfg.group_tasks, cfg.concurrent_tasks - self.in_flight())
            mates = list(waiting) if cfg.mix_spaces else [
                t for t in waiting if get_task(t).domain == domain]  # fmt: skip
            for name in mates[: room - 1]:
                waiting.remove(name)
                names.append(name)
            tasks = [get_task(name) for name in names]
            batches = {name: episode_batches(cfg) for name in names}
            handles = {name: [self.pool.new_handles(len(b)) for b in batches[name]]
                       for name in names}  # fmt: skip
        except Exception:  # e.g. every env worker has died
            for name in names:
                self.finish({"task": name, "error": traceback.format_exc()})
            return
        run_id = next(self.ids)
        self.runs[run_id] = _Run(run_id, tasks, batches, handles)
        ops = []
        for name in names:
            first = handles[name][0][0]  # renders when recording, as env 0 in evaluate_task
            for h in sum(handles[name], []):
                opts = {"render_mode": "rgb_array"} if cfg.record and h == first else {}
                ops.append((h, "open", (name, opts)))
            if self.source is not None:  # after its env is open: ops on one worker run in order
                ops.append((first, env_prompts, self.source))
        self.pool.submit((run_id, "open"), ops)

    def opened(self, run: _Run, replies: list) -> None:
        """Start the run's batches (tasks whose envs could not be made, or prompts not read,
        fail), one play for batch b of all its tasks with the same spaces, or with
        `mix_spaces` (and a model), of all its tasks."""
        parts = self._tasks_by_spaces(run, replies)
        mix = self.cfg.mix_spaces and parts and self.agent[0] is not None  # uniform: no forwards
        for chosen in [parts] if mix else [[p] for p in parts]:
            for b in range(len(run.batches[chosen[0][1][0].name])):
                self._start_play(run, chosen, b)
        self.finish_ended(run)

    def _tasks_by_spaces(self, run: _Run, replies: list) -> list[tuple[tuple, list]]:
        """The run's tasks whose envs opened (the others fail), grouped by their envs' spaces,
        their prompts kept in `run.prompts`."""
        source = self.source
        parts: list[tuple[tuple, list]] = []  # (spaces, tasks)
        at = 0
        for task in list(run.tasks):
            size = sum(len(b) for b in run.batches[task.name]) + (source is not None)
            mine, at = replies[at : at + size], at + size
            broken = [value for ok, value in mine if not ok]
            if broken:
                run.tasks.remove(task)
                self.finish({"task": task.name, "error": broken[0]})
                continue
            run.prompts[task.name] = mine[-1][1] if source is not None else []
            spaces_ = mine[0][1]
            part = next((p for p in parts if p[0] == spaces_), None)
            if part is None:
                parts.append((spaces_, [task]))
            else:
                part[1].append(task)
        return parts

    def _start_play(self, run: _Run, parts: list[tuple[tuple, list]], b: int) -> None:
        """Start one play: batch `b` of each task of `parts` ((spaces, tasks) each), with one
        policy (for envs of several spaces when there are several parts)."""
        cfg = self.cfg
        row_tasks, batch, handles, frames, groups = [], [], [], {}, []
        for _, tasks in parts:
            first = len(batch)
            for t in tasks:
                if cfg.record and b == 0:  # each task's first episode
                    frames[len(batch)] = run.frames.setdefault(t.name, [])
                batch += run.batches[t.name][b]
                handles += run.handles[t.name][b]
                row_tasks += [t] * len(run.batches[t.name][b])
            groups.append(list(range(first, len(batch))))
        if len(parts) == 1:
            (obs_space, act_space), groups = parts[0][0], None
            policy = make_policy(self.agent, obs_space, act_space, max(self.n, len(batch)), cfg)
        else:  # rows are exactly the episodes: every row belongs to a space group
            obs_space, act_space = ([spaces_[i] for spaces_, _ in parts] for i in (0, 1))
            policy = make_policy(self.agent, obs_space, act_space, len(batch), cfg, groups)
        prompts = [run.prompts[t.name] for t in row_tasks]
        play = play_batch(policy, obs_space, act_space, row_tasks, batch, prompts, frames,
                          cfg.record, self.progress, cfg.prompt_choice, groups)  # fmt: skip
        play_id = next(self.ids)
        names = [t.name for t in row_tasks]
        run.plays[play_id] = _Play(play, handles, names, set(names))
        self._send(run, play_id, None)

    def advance(self, run: _Run, play_id: int, outcomes: list) -> None:
        """Send a play its env outcomes, and finish the run's tasks whose episodes have all
        ended."""
        self._send(run, play_id, outcomes)
        self.finish_ended(run)

    def _send(self, run: _Run, play_id: int, outcomes: list | None) -> None:
        """Send a play its env outcomes (None: start it) and submit the ops it asks for next,
        on behalf of its live envs."""
        p = run.plays[play_id]
        try:
            ops = p.play.send(outcomes)
        except StopIteration:
            del run.plays[play_id]
            if self.progress is not None:
                self.progress(len(p.handles))
            return
        p.live = {p.row_tasks[k] for k, _, _ in ops}
        self.pool.submit((run.id, play_id), [(p.handles[k], fn, args) for k, fn, args in ops])

    def close(self, handles: list[int]) -> None:
        """Close these envs (their replies, under a tag of no run, are dropped)."""
        self.pool.submit(("close", next(self.ids)), [(h, "close", ()) for h in handles])

    def finish_ended(self, run: _Run) -> None:
        """Hand on the results of the run's tasks that no play has an episode of left, and
        close their envs, so that the task's room is free for the next ones."""
        live = set().union(*(p.live for p in run.plays.values()))
        for task in run.tasks:
            if task.name not in live and task.name not in run.done:
                run.done.add(task.name)
                self.close(sum(run.handles[task.name], []))
                self.finish(self._result(run, task))

    def _result(self, run: _Run, task) -> dict:
        episodes = sum(run.batches[task.name], [])
        result = task_result(task, episodes, len(run.prompts[task.name]), time.time() - run.t0)
        if run.frames.get(task.name):
            result["frames"] = run.frames[task.name]  # turned into a GIF file by the caller
        return result

    def end(self, run_id: int, error: str | None) -> None:
        """Close the envs of the run's tasks still open and hand each one's results (or the
        error) to `finish`."""
        run = self.runs.pop(run_id)  # replies still in flight for it are dropped
        open_ = [t for t in run.tasks if t.name not in run.done]
        self.close([h for t in open_ for h in sum(run.handles[t.name], [])])
        for task in open_:
            self.finish({"task": task.name, "error": error} if error is not None
                        else self._result(run, task))  # fmt: skip
