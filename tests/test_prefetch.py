"""Batches built ahead in a background thread (batches/prefetch.py): the same items in the same
order as building them in the loop, from any start step; the worker's errors in the caller's
thread; a worker that stops when the loop does."""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import fields

import numpy as np
import pytest
import torch
from test_train import config, data_dir  # noqa: F401  (the tiny data root fixture)

from opengato.batches.prefetch import Prefetcher, pin_memory
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.tokens.tokenizer import Tokenizer
from opengato.training.distributed import Processes
from opengato.training.logger import TrainLogger
from opengato.training.train import build_data, step_data


def _item(step: int) -> np.ndarray:
    return np.random.default_rng([7, step]).random(3)


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("start", [0, 4])
def test_yields_make_of_every_step_in_order(depth, start):
    with Prefetcher(_item, start, 10, depth) as items:
        got = list(items)
    assert [s for s, _ in got] == list(range(start, 10))
    for step, item in got:
        np.testing.assert_array_equal(item, _item(step))


def test_training_batches_are_the_same_with_and_without_prefetch(data_dir, tmp_path):  # noqa: F811
    """The batches of `opengato train` (training/train.py's `step_data`), prefetched or built in
    the loop, from step 0 and from a resumed step."""
    cfg = config(data_dir, tmp_path)
    tok = Tokenizer(cfg.tokenizer)
    procs = Processes(world=1, rank=0, device=torch.device("cpu"), own_group=False)
    mix, _ = build_data(cfg, tok, procs, TrainLogger(enabled=False))
    model = Gato(make_config(cfg.preset, tok.vocab_size, context_len=cfg.context_len))
    data = step_data(cfg, mix, model, procs, cfg.batch_size)
    for start in (0, 3):
        with Prefetcher(data, start, 6, 0) as inline, Prefetcher(data, start, 6, 2) as ahead:
            for (s0, (seed0, b0, real0)), (s1, (seed1, b1, real1)) in zip(
                inline, ahead, strict=True
            ):
                assert (s0, seed0, real0) == (s1, seed1, real1)
                for f in fields(b0):
                    a, b = getattr(b0, f.name), getattr(b1, f.name)
                    assert (a is None and b is None) or torch.equal(a, b), f.name


def test_worker_error_is_raised_in_the_callers_thread_with_its_traceback():
    def make(step: int) -> int:
        if step == 2:
            raise ValueError("observation position 600 >= max_obs_pos=512")
        return step

    got = []
    with pytest.raises(ValueError, match="max_obs_pos") as err:
        with Prefetcher(make, 0, 5, 2) as items:
            for _, item in items:
                got.append(item)
    assert got == [0, 1]  # the steps before the failing one still arrive
    frames = [f.name for f in traceback.extract_tb(err.value.__traceback__)]
    assert "make" in frames and "_work" in frames  # the worker's own frames
    assert any("step 2" in note for note in err.value.__notes__)
    assert not any(t.name == "opengato-prefetch" for t in threading.enumerate())


def test_worker_stops_when_the_loop_ends_early():
    built = []

    def make(step: int) -> int:
        built.append(step)
        return step

    with Prefetcher(make, 0, 1000, 2) as items:
        for step, _ in items:
            if step == 1:
                break
    assert not any(t.name == "opengato-prefetch" for t in threading.enumerate())
    time.sleep(0.05)
    assert len(built) <= 1 + 2 + 2  # taken, waiting in the queue, and the one being built


def test_refuses_a_negative_depth():
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(_item, 0, 1, -1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory_keeps_the_batch(data_dir, tmp_path):  # noqa: F811
    from opengato.batches.mixture import Mixture
    from opengato.batches.sources import build_shards, resolve_sources
    from opengato.batches.windows import Split

    tok = Tokenizer()
    shards = build_shards(resolve_sources(config(data_dir, tmp_path).tasks), tok, data_dir,
                          data_dir / "shards")  # fmt: skip
    batch = Mixture(shards, 64, split=Split("all"), pad_id=tok.pad_id).sample_batch(
        np.random.default_rng(0), 4
    )[0]
    pinned = pin_memory(batch)
    for f in fields(batch):
        a, b = getattr(batch, f.name), getattr(pinned, f.name)
        assert (a is None and b is None) or (b.is_pinned() and torch.equal(a, b)), f.name
