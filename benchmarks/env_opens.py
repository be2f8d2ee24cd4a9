"""How long an evaluation waits for its envs to open: `envs` envs of each task of a spec
opened in `workers` env workers (`opengato.workers.EnvPool`), dealt as evaluation deals them
(a task's envs in chunks of at least `EnvPool.ENVS_PER_MESSAGE` over the least-loaded workers).
Prints the wall time until every env is open, and the CPU seconds a build, by domain, from a
build of each task in this process (its second: imports and first-use costs left out).

    python benchmarks/env_opens.py metaworld 20 2
    python benchmarks/env_opens.py "babyai,metaworld,classic,mujoco,dmc,minatar,-heldout" 20 2

Results: benchmarks/RESULTS.md, "Meta-World envs built in a fifth of the time".
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict

from opengato.suites import default_to_headless_gl
from opengato.tasks import get_task, select
from opengato.workers import EnvPool


def main() -> None:
    spec, envs, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    default_to_headless_gl()
    names = select(spec)[0]
    with EnvPool(workers) as pool:
        start = time.perf_counter()
        for name in names:
            pool.submit(name, [(h, "open", (name, {})) for h in pool.new_handles(envs)])
        failed = 0
        while batch := pool.wait():
            failed += sum(not ok for _, replies in batch for ok, _ in replies)
        wall = time.perf_counter() - start
    print(f"{len(names)} tasks x {envs} envs open in {workers} workers: {wall:.1f} s"
          f" ({failed} failed)")  # fmt: skip
    builds = defaultdict(list)
    for name in names:
        task = get_task(name)
        task.make_env().close()
        t = time.process_time()
        task.make_env().close()
        builds[task.domain].append(time.process_time() - t)
    for domain, seconds in builds.items():
        print(f"  {domain}: {len(seconds)} tasks, a build {statistics.median(seconds) * 1e3:.0f} ms"
              f" of CPU (median), {sum(seconds):.1f} s for one of each")  # fmt: skip


if __name__ == "__main__":
    main()
