"""The first stage of `opengato demo` / `opengato suite`, timed: collect the recipe's datasets
(into an empty data root), tokenising each in the collection's workers as it is written, then
tokenise what is left. Prints the wall time of the collection, of the tokenising after it,
and of both: the time from the start until training can start.

    python benchmarks/stage_one.py demo DATA_ROOT 2              # the demo's 12 tasks + corpora
    python benchmarks/stage_one.py suite DATA_ROOT 2 "babyai/GoToObj,metaworld/reach-v3,text"

The third argument is the collection's workers, the fourth (optional) the recipe's --tasks.
Use a data root of its own: what is current there is not collected again. Results:
benchmarks/RESULTS.md, "Tokenising in the collection's workers".
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from opengato.budget import tokenize, tokenize_job
from opengato.data.collect import run_collect
from opengato.demo import DemoConfig, SuiteConfig, stage_configs
from opengato.suites import default_to_headless_gl


def main() -> None:
    recipe, data_dir, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = {"demo": DemoConfig, "suite": SuiteConfig}[recipe](data_dir=data_dir)
    if len(sys.argv) > 4:
        cfg = replace(cfg, tasks=sys.argv[4])
    cfg = replace(cfg, collect=replace(cfg.collect, workers=workers),
                  train=replace(cfg.train, tokenize_workers=workers))  # fmt: skip
    default_to_headless_gl()
    collect, train, _ = stage_configs(cfg)
    start = time.perf_counter()
    collected = run_collect(collect, after=tokenize_job(train))
    collected_s = time.perf_counter() - start
    tokenize(train, collected)
    total = time.perf_counter() - start
    print(f"\nstage one, {recipe} recipe, {workers} workers: collection {collected_s:.1f} s, "
          f"tokenising after it {total - collected_s:.1f} s, in all {total:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
