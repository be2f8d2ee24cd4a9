"""How long the tasks' code hashes take (`data/generator.py`'s `generator_hash`: what
`opengato collect` checks for stale data and `opengato eval` for stale reference scores), in
one fresh process, per domain.

    python benchmarks/env_hash_time.py [tasks]

Default: the suite's tasks (`opengato.tasks.SUITE`'s control tasks). The first task of a
domain pays its imports too.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

from opengato.data.generator import generator_hash
from opengato.tasks import SUITE, get_task, select


def main() -> None:
    names = select(sys.argv[1] if len(sys.argv) > 1 else SUITE)[0]
    per: dict[str, float] = defaultdict(float)
    start = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        generator_hash(get_task(name))
        per[name.split("/")[0]] += time.perf_counter() - t
    print(f"{len(names)} tasks in {time.perf_counter() - start:.1f} s")
    for domain, seconds in per.items():
        print(f"  {domain:<10} {seconds:6.1f} s")


if __name__ == "__main__":
    main()
