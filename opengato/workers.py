"""Worker processes for collection and evaluation: one start method, one registry.

`worker_map` maps jobs over a pool of processes (`opengato eval --workers`, tokenising),
`worker_pool` hands them out one by one (collection);
`EnvPool` keeps environments alive in worker processes and steps them on request, while the
process that holds the model acts for them (`opengato eval --env-workers`).

Workers are started with `spawn`: a fresh interpreter, the same on Linux, macOS and Windows,
and safe however far the parent got (a forked child inherits torch's thread pools and MuJoCo's
GL contexts half-alive, and may hang in them). A fresh interpreter knows only the built-in
tasks, so each worker first installs a copy of the parent's task registry as it was when the
pool started (`tasks.registry_snapshot`): a task registered at run time, by a script, a
notebook or a test, is found by name in every worker, whichever verb started them. The price
is a second or two per worker to import opengato and its simulators; jobs then reuse it.

As with any `spawn` pool, a script that starts workers must guard its entry point with
`if __name__ == "__main__":`, since each worker imports the script's main module.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any

from opengato.tasks import install_registry, registry_snapshot

START_METHOD = "spawn"


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or `taskset`'s share)."""
    return len(os.sched_getaffinity(0)) or 1


Map = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


@contextlib.contextmanager
def worker_map(workers: int) -> Iterator[Map]:
    """Yield `map(fn, jobs)`, results in job order: in this process when `workers <= 1`, else
    over `workers` spawned processes that see this process's task registry. `fn` must be a
    module-level function; jobs and results are pickled."""
    if workers <= 1:
        yield map
        return
    with worker_pool(workers) as pool:
        yield pool.map


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[cf.Executor]:
    """Yield an executor whose `submit(fn, job)` runs in one of `workers` spawned processes
    that see this process's task registry, or, when `workers <= 1`, in this process at once
    (the future it returns is already done). Jobs not started when the block raises are
    dropped, not run."""
    if workers <= 1:
        yield _InProcess()
        return
    context = mp.get_context(START_METHOD)
    with cf.ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=install_registry,
        initargs=(registry_snapshot(),),
    ) as pool:
        try:
            yield pool
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


class _InProcess(cf.Executor):
    """An executor that runs each job as it is submitted, in this process."""

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:  # handed over as the future's, as a pool's would be
            future.set_exception(e)
        return future


# --------------------------------------------------------------------------- envs in workers

Op = tuple[int, Any, tuple]
"""One env operation: (handle, what, args). `what` is "open" (args: task name, make_env's
keyword arguments; the reply is the env's (observation_space, action_space)), "close", or a
module-level function called as `what(env, task, *args)` whose return value is the reply."""


class EnvPool:
    """Environments living in `workers` spawned processes, stepped there while this process
    does other work: `submit(tag, ops)` sends them out and returns at once, `wait()` blocks until
    some submitted batch of ops has all its replies. With `workers == 0` the ops run in this
    process, at submit (the same interface, for tests and for machines without spare cores).

    Each env has a handle (`new_handles`) that names it in ops; the envs of one `new_handles`
    call are dealt over the least-loaded workers in contiguous chunks of at least
    `ENVS_PER_MESSAGE` (fewer messages per step for this process to send and receive, while a
    batch of 20 envs still runs on several cores). Every reply is `(ok, value)`: `ok` False
    carries a traceback (the op raised, or its worker died: only that worker's envs are lost).
    Workers see this process's task registry, as `worker_map`'s do.
    """

    ENVS_PER_MESSAGE = 4

    def __init__(self, workers: int):
        self.workers = workers
        self._next_handle = 0
        self._where: dict[int, int] = {}  # handle -> worker
        self._load = [0] * max(workers, 1)  # live envs per worker
        self._done: list[tuple[Any, list]] = []  # (tag, replies) ready to hand out
        self._pending: dict[Any, list] = {}  # tag -> [replies so far, parts outstanding]
        self._queues: list[deque] = [deque() for _ in range(max(workers, 1))]  # (tag, indices)
        self._local: dict[int, tuple[Any, Any]] = {}  # handle -> (env, task), workers == 0
        self._dead: dict[int, str] = {}
        self._procs: list = []
        self._sends: list = []  # this process -> worker w
        self._recvs: list = []  # worker w -> this process
        if workers > 0:
            context = mp.get_context(START_METHOD)
            snapshot = registry_snapshot()
            for _ in range(workers):
                requests, send = context.Pipe(duplex=False)
                recv, replies = context.Pipe(duplex=False)
                proc = context.Process(
                    target=_env_worker, args=(requests, replies, snapshot), daemon=True
                )
                proc.start()
                requests.close()  # the worker's ends
                replies.close()
                self._procs.append(proc)
                self._sends.append(send)
                self._recvs.append(recv)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def new_handles(self, n: int) -> list[int]:
        """Handles for `n` new envs (open them with "open" ops), placed over the workers."""
        handles = list(range(self._next_handle, self._next_handle + n))
        self._next_handle += n
        alive = [w for w in range(len(self._load)) if w not in self._dead]
        if not alive:
            raise RuntimeError("every env worker has died: " + "; ".join(self._dead.values()))
        parts = max(1, min(len(alive), n // self.ENVS_PER_MESSAGE))
        order = sorted(alive, key=lambda w: self._load[w])[:parts]
        for i, h in enumerate(handles):
            w = order[i * parts // n]
            self._where[h] = w
            self._load[w] += 1
        return handles

    def submit(self, tag: Any, ops: list[Op]) -> None:
        """Send `ops` to the workers holding their envs; their replies come back, in op order,
        from `wait` under `tag` (unique among the tags in flight)."""
        where = [self._where[h] for h, _, _ in ops]
        for h, what, _ in ops:
            if what == "close":
                self._load[self._where.pop(h)] -= 1
        if self.workers == 0:
            self._done.append((tag, [_run_op(self._local, op) for op in ops]))
            return
        by_worker: dict[int, list[int]] = {}
        for i, w in enumerate(where):
            by_worker.setdefault(w, []).append(i)
        if not by_worker:
            self._done.append((tag, []))
            return
        # Every message is pickled before any is sent: an op that cannot be pickled raises
        # here, with nothing of this tag in flight.
        messages = {w: ForkingPickler.dumps((tag, [ops[i] for i in idx]))
                    for w, idx in by_worker.items() if w not in self._dead}  # fmt: skip
        self._pending[tag] = [[None] * len(ops), len(by_worker)]
        for w, idx in by_worker.items():
            self._queues[w].append((tag, idx))
            if w in self._dead:
                self._worker_died(w)
                continue
            try:
                self._sends[w].send_bytes(messages[w])
            except (BrokenPipeError, ConnectionResetError):
                self._worker_died(w)

    def _fill(self, tag: Any, idx: list[int], values: list) -> None:
        entry = self._pending[tag]
        for i, v in zip(idx, values, strict=True):
            entry[0][i] = v
        entry[1] -= 1
        if entry[1] == 0:
            self._done.append((tag, self._pending.pop(tag)[0]))

    def wait(self) -> list[tuple[Any, list]]:
        """(tag, replies) of every submitted batch of ops that is complete, blocking until
        there is at least one; [] when nothing is in flight."""
        while not self._done and self._pending:
            busy = [self._recvs[w] for w, q in enumerate(self._queues) if q]
            if not busy:
                raise RuntimeError(f"env ops {list(self._pending)} wait on no worker")
            for conn in multiprocessing.connection.wait(busy):
                w = self._recvs.index(conn)
                try:
                    tag, values = conn.recv()
                except (EOFError, OSError):
                    self._worker_died(w)
                    continue
                sent_tag, idx = self._queues[w].popleft()
                assert tag == sent_tag, (tag, sent_tag)
                self._fill(tag, idx, values)
        done, self._done = self._done, []
        return done

    def _worker_died(self, w: int) -> None:
        """Fail every op queued on worker w, now and from now on."""
        if w not in self._dead:
            self._procs[w].join(1)
            code = self._procs[w].exitcode
            self._dead[w] = f"env worker {w} died (exit code {code}); its envs are lost"
        while self._queues[w]:
            tag, idx = self._queues[w].popleft()
            self._fill(tag, idx, [(False, self._dead[w])] * len(idx))

    def close(self) -> None:
        """Stop the workers (their envs are closed with them)."""
        for w, conn in enumerate(self._sends):
            if w not in self._dead:
                with contextlib.suppress(OSError):
                    conn.send(None)
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._sends + self._recvs:
            conn.close()
        for env, _ in self._local.values():
            env.close()
        self._procs, self._sends, self._recvs, self._local = [], [], [], {}


def _run_op(envs: dict[int, tuple[Any, Any]], op: Op) -> tuple[bool, Any]:
    """Run one op on the envs of this process; (True, value), or (False, traceback)."""
    from opengato.tasks import get_task

    handle, what, args = op
    try:
        if what == "open":
            task = get_task(args[0])
            env = task.make_env(**args[1])
            envs[handle] = (env, task)
            return True, (env.observation_space, env.action_space)
        if what == "close":
            envs.pop(handle)[0].close()
            return True, None
        env, task = envs[handle]
        return True, what(env, task, *args)
    except Exception:
        return False, traceback.format_exc()


def _env_worker(requests, replies, snapshot: bytes) -> None:
    """An env worker's loop: receive (tag, ops), run them in order, send (tag, replies); None
    stops it. A thread reads the requests as they come, so that a sender never waits on a
    worker that is itself waiting to send a large reply (two full pipes would deadlock)."""
    install_registry(snapshot)
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        while True:
            try:
                msg = requests.recv()
            except (EOFError, OSError):  # the parent has gone
                msg = None
            inbox.put(msg)
            if msg is None:
                return

    threading.Thread(target=read, daemon=True).start()
    envs: dict[int, tuple[Any, Any]] = {}
    while (msg := inbox.get()) is not None:
        tag, ops = msg
        values = [_run_op(envs, op) for op in ops]
        try:
            replies.send((tag, values))
        except (BrokenPipeError, ConnectionResetError):
            break
        except Exception:  # a reply that cannot be pickled fails its ops, not the worker
            replies.send((tag, [(False, traceback.format_exc())] * len(ops)))
    for env, _ in envs.values():
        env.close()
