"""Where a training run's messages and numbers go: stdout, `metrics.jsonl`, TensorBoard (`tb/`)
and a progress bar, all on the main process only."""

from __future__ import annotations

import json
import time
from pathlib import Path

from opengato.files import atomic_write_text

METRICS_FILE = "metrics.jsonl"


class TrainLogger:
    """Prints messages and records metrics on the main process; the others stay quiet.

    Messages can be printed from the start; `open` starts the metrics file, TensorBoard and the
    progress bar once the run knows its first step (a resumed run appends to its metrics)."""

    def __init__(self, enabled: bool, progress: bool = True):
        self.enabled, self.progress = enabled, progress
        self.bar = self.writer = self.file = None
        self.t_start, self.timed_tokens, self.timed_seconds = time.perf_counter(), 0, 0.0

    def print(self, message: str) -> None:
        """A line on stdout (above the progress bar when it shows)."""
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(message)

    def open(self, out_dir: Path, config: dict, start_step: int, steps: int) -> None:
        """Start recording into `out_dir`: the run's resolved `config` (`train_config.json`),
        then its metrics from `start_step` of `steps` on (on a resume, what was logged after that
        checkpoint, before the interruption, is dropped first)."""
        self.t_start = time.perf_counter()
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "train_config.json", json.dumps(config, indent=1))
        self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_step or None)
        if start_step:
            truncate_metrics(out_dir / METRICS_FILE, start_step)
        self.file = open(out_dir / METRICS_FILE, "a" if start_step else "w")
        self.bar = tqdm(initial=start_step, total=steps, disable=not self.progress,
                        dynamic_ncols=True)  # fmt: skip

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics at `step`: one line of `metrics.jsonl` and a TensorBoard scalar each."""
        if not self.enabled:
            return
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()

    def step_done(self, loss: float, tokens: int, seconds: float, warmup: bool) -> float:
        """A training step of `tokens` tokens took `seconds`: advance the progress bar; return
        its tokens/s. A `warmup` step (the run's first: allocations) is left out of the mean."""
        if not warmup:
            self.timed_tokens += tokens
            self.timed_seconds += seconds
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.3f}", tok_s=f"{tokens / seconds:,.0f}", refresh=False
            )
            self.bar.update()
        return tokens / seconds

    def speed(self) -> dict[str, float | None]:
        """`tokens_per_s` (the mean over the timed steps; None before any) and `wall_s` (since
        `open`)."""
        mean = self.timed_tokens / self.timed_seconds if self.timed_seconds else None
        return {"tokens_per_s": mean, "wall_s": time.perf_counter() - self.t_start}

    def speed_text(self) -> str:
        tokens_per_s = self.speed()["tokens_per_s"]
        return f"{tokens_per_s:,.0f}" if tokens_per_s else "-"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.file.close()


def truncate_metrics(path: str | Path, step: int) -> int:
    """Keep only the entries of a ``metrics.jsonl`` with ``step <= step`` (rewritten atomically),
    so a run resumed from ``step`` does not repeat the ones logged after that checkpoint; a
    line cut short by a crash goes too. Returns how many entries were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            keep = isinstance(entry, dict) and int(entry["step"]) <= step
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += bool(line.strip())
    if dropped:
        atomic_write_text(path, "".join(kept))
    return dropped
