"""Where a training run's messages and numbers go: stdout, `metrics.jsonl`, TensorBoard (`tb/`)
and a progress bar, all on the main process only; and the run's speed.

Speed counts two kinds of token: *real* tokens, the ones that are not padding (what the model
learns from: `tokens_per_s`, `train/tokens_per_s`, and what MFU is computed from), and *slots*,
every position of every sequence, padding included (batch x context_len per step: `slots_per_s`,
`train/slots_per_s`). Their ratio is `1 - train/pad_fraction`. Speeds are measured between
the moments the loop reads its losses back from the device (every log step), never per step: on
a GPU a step's host time says little, since the host runs ahead of the device."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from opengato.files import atomic_write_text

METRICS_FILE = "metrics.jsonl"


class TrainLogger:
    """Prints messages and records metrics on the main process; the others stay quiet.

    Messages can be printed from the start; `open` starts the metrics file, TensorBoard and the
    progress bar once the run knows its first step (a resumed run appends to its metrics)."""

    def __init__(self, enabled: bool, progress: bool = True):
        self.enabled, self.progress = enabled, progress
        self.bar = self.writer = self.file = None
        self.t_start = self.t_interval = time.perf_counter()
        self.timed_real, self.timed_slots, self.timed_seconds = 0, 0, 0.0
        self.interval_steps, self.interval_wait = 0, 0.0
        self.first_step_s: float | None = None

    def print(self, message: str) -> None:
        """A line on stdout (above the progress bar when it shows)."""
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(message)

    def open(self, out_dir: Path, config: dict, start_step: int, steps: int) -> None:
        """Start recording into `out_dir`: the run's resolved `config` (`train_config.json`),
        then its metrics from `start_step` of `steps` on (on a resume, what was logged after that
        checkpoint, before the interruption, is dropped first)."""
        self.t_start = self.t_interval = time.perf_counter()
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

    def step_done(self, wait_s: float) -> None:
        """A training step was launched after waiting `wait_s` seconds for its batch: count it,
        advance the progress bar."""
        self.interval_wait += wait_s
        self.interval_steps += 1
        if self.bar is not None:
            self.bar.update()

    def interval_done(self, real_tokens: int, slots: int, warmup: bool = False) -> dict[str, float]:
        """The loop has just read its losses back from the device, so the steps counted since
        the last call are finished, with `real_tokens` of their `slots` not padding (over all
        processes): their speed, `train/tokens_per_s` (real), `train/slots_per_s`,
        `train/pad_fraction`, and the mean `train/step_s` and `train/data_s` (the wait for a
        batch). A `warmup` interval (the run's first step: allocations, compilation) is left
        out of the run's mean speed."""
        now = time.perf_counter()
        seconds, steps = now - self.t_interval, max(1, self.interval_steps)
        out = {"train/tokens_per_s": real_tokens / seconds, "train/slots_per_s": slots / seconds,
               "train/pad_fraction": 1.0 - real_tokens / max(1, slots),
               "train/step_s": seconds / steps, "train/data_s": self.interval_wait / steps}  # fmt: skip
        if warmup:
            self.first_step_s = seconds
        else:
            self.timed_real += real_tokens
            self.timed_slots += slots
            self.timed_seconds += seconds
        self.t_interval, self.interval_steps, self.interval_wait = now, 0, 0.0
        return out

    @contextmanager
    def untimed(self, device: torch.device) -> Iterator[None]:
        """Leave the time spent in the block (validation, checkpoints) out of the speed. The
        device first finishes the steps launched before it, so that they stay counted."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        yield
        self.t_interval += time.perf_counter() - t

    def show_loss(self, loss: float) -> None:
        """The latest loss read back, beside the progress bar."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def speed(self) -> dict[str, float | None]:
        """The run's mean speed over its timed steps (None before any): `tokens_per_s` (real
        tokens) and `slots_per_s` (padding included); `first_step_s`, the seconds of the first
        step, which the mean leaves out (allocations; with --compile, compilation); and `wall_s`
        (since `open`)."""
        t = self.timed_seconds
        return {"tokens_per_s": self.timed_real / t if t else None,
                "slots_per_s": self.timed_slots / t if t else None,
                "first_step_s": self.first_step_s,
                "wall_s": time.perf_counter() - self.t_start}  # fmt: skip

    def speed_text(self) -> str:
        """The mean real tokens/s, for printing."""
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
