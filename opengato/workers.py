"""Worker processes for collection and evaluation: one start method, one registry.

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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opengato.tasks import install_registry, registry_snapshot

START_METHOD = "spawn"

Map = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


@contextlib.contextmanager
def worker_map(workers: int) -> Iterator[Map]:
    """Yield `map(fn, jobs)`, results in job order: in this process when `workers <= 1`, else
    over `workers` spawned processes that see this process's task registry. `fn` must be a
    module-level function; jobs and results are pickled."""
    if workers <= 1:
        yield map
        return
    context = mp.get_context(START_METHOD)
    with cf.ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=install_registry,
        initargs=(registry_snapshot(),),
    ) as pool:
        try:
            yield pool.map
        except BaseException:
            pool.shutdown(cancel_futures=True)  # jobs not started yet are dropped, not run
            raise
