"""Batches built ahead of the training loop, in a background thread.

A training batch is a pure function of (seed, rank, step) (``batches.mixture.step_rng``), so a
worker can build the batches of the next steps while the device trains on the current one, and
the loop gets exactly the batches it would have built itself: the same with or without
prefetching, and from the resumed step on after ``--resume``. One thread is enough: most of the
work (numpy over memory-mapped shards, torch's CPU ops) runs without the GIL, and a thread shares
the shards and needs nothing pickled. For a GPU the batches are put in pinned (page-locked)
memory (:func:`pin_memory`), from which the copy to the device runs asynchronously.

    with Prefetcher(make, start, stop, depth=2) as batches:
        for step, item in batches:   # item == make(step)
            ...
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Generic, TypeVar

from opengato.model.inputs import GatoBatch

Item = TypeVar("Item")

_POLL_S = 0.1  # how often a blocked worker or reader checks that the other side is still there


class Prefetcher(Generic[Item]):
    """Yields ``(step, make(step))`` for ``step`` in ``[start, stop)``, in order, with up to
    ``depth`` items built ahead by one background thread (``depth`` 0: each built in the
    caller's thread when it is asked for, no thread at all).

    An exception raised by ``make`` is raised in the caller's thread when it asks for that step,
    with the worker's traceback (and a note naming the step); the worker then stops. Use it as a
    context manager, so that the worker stops when the loop ends early."""

    def __init__(self, make: Callable[[int], Item], start: int, stop: int, depth: int = 2):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.make, self.start, self.stop, self.depth = make, start, stop, depth
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Prefetcher[Item]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[int, Item]]:
        if self.depth == 0:
            for step in range(self.start, self.stop):
                yield step, self.make(step)
            return
        if self._thread is not None:
            raise RuntimeError("a Prefetcher is iterated once")
        self._thread = threading.Thread(target=self._work, name="opengato-prefetch", daemon=True)
        self._thread.start()
        for _ in range(self.start, self.stop):
            step, item, error = self._get()
            if error is not None:
                raise error
            yield step, item

    def close(self) -> None:
        """Stop the worker (it finishes the item it is building) and drop what it built."""
        self._closed.set()
        if self._thread is not None:
            while self._thread.is_alive():
                self._drain()
                self._thread.join(_POLL_S)
            self._drain()

    def _work(self) -> None:
        for step in range(self.start, self.stop):
            if self._closed.is_set():
                return
            try:
                entry = (step, self.make(step), None)
            except BaseException as error:  # handed to the caller's thread, raised there
                error.add_note(f"(raised by the prefetch worker building the batch of step {step})")
                entry = (step, None, error)
            while not self._closed.is_set():
                try:
                    self._queue.put(entry, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            if entry[2] is not None:
                return

    def _get(self) -> tuple[int, Item | None, BaseException | None]:
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch worker stopped without a batch") from None

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


def pin_memory(batch: GatoBatch) -> GatoBatch:
    """A copy of ``batch`` in pinned host memory, which ``batch.to(cuda, non_blocking=True)``
    copies from without holding up the host. Needs CUDA."""
    return GatoBatch(
        **{
            f.name: None if (t := getattr(batch, f.name)) is None else t.pin_memory()
            for f in fields(batch)
        }
    )
