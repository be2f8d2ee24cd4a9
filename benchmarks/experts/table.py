"""The "Shipped experts" table of docs/experts.md, from the JSON rows `opengato train-expert`
writes beside each weight file (and those of runs that were not shipped, in failed/).

Usage: python benchmarks/experts/table.py
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [(ROOT / "opengato/experts/weights", "shipped"), (Path(__file__).parent / "failed", "**not shipped**")]  # fmt: skip


def main() -> None:
    print("| task | algo | steps | train wall time | expert return | random return | status |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    rows = [(json.loads(p.read_text()), status) for folder, status in SOURCES for p in folder.glob("*.json")]  # fmt: skip
    for r, status in sorted(rows, key=lambda row: row[0]["task"]):
        print(
            f"| {r['task']} | {r['algo'].upper()} | {r['steps']:,} | {r['train_wall_s']:.0f} s "
            f"({r['train_steps_per_s']:,.0f} steps/s) | {r['expert_mean']} ± {r['expert_std']} "
            f"| {r['random_mean']} ± {r['random_std']} | {status} ({r['commit']}) |"
        )


if __name__ == "__main__":
    main()
