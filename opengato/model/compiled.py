"""Decoding through one compiled graph per shape: real-time acting on a CPU (opt-in).

Eager decoding at batch 1 runs ~1,000 small PyTorch ops a control step (norms, RoPE, cache
writes, softmax, residual adds) between the matmuls, each with its Python and dispatch cost.
`torch.compile` (Inductor, with `freezing`) makes one graph of a whole decoding forward: the
weights become constants (packed for oneDNN where several tokens are fed, as in
model/packed.py; streamed by generated loops for a single token, see model/decoding.py), the
residual adds ride on the matmuls, and the small ops become a few generated C++ loops.

A graph needs fixed shapes, so decoding here goes through a *static* KV cache (model/kv_cache.py:
attention reads every slot, with a mask of the visible ones) and everything that depends on the
cache's length (RoPE rows, the mask, the slots written) is computed outside the graph and passed
in. A forward's shape (batch size, tokens, image patches) is compiled the second time it is seen
(gato-79m: ~10 s on 2 CPU cores). A shape seen once, and any forward into an empty cache (an
episode's first, with its prompt: prompts of equal length recur, but each runs once an episode),
run eagerly through the same cache and the same code (`Gato.embed`, `Gato.trunk`). A graph that
feeds several tokens holds its own packed copy of the block weights (gato-79m bf16: ~116 MB; a
single token's graph reads the model's own), so a model keeps the graphs that fit
in `GRAPH_MEMORY` (at least 4), dropping the least recently used (evaluating task after task,
those of finished tasks). If compiling fails (no C++ compiler, say), the decoder warns once and
runs eagerly from then on.

On a GPU the same decoder records CUDA graphs instead (`GraphForward`): there a decoding
forward of gato-79m at batch 1 keeps the device busy for a fraction of the time Python takes to
launch its ~150 kernels one by one (one H100: 10 control steps, 20.5 ms of GPU time against 602
ms of CPU time under the profiler; benchmarks/RESULTS.md, "On one H100"), and a graph replays
them all with one launch. A CUDA graph runs on the addresses it was recorded with: the
forward's inputs (the batch's tensors, the RoPE rows, the mask, the cache slots written) are
copied into the recorded ones before each replay, and a graph belongs to one KV cache (its
buffers), so graphs are kept per (shape, cache); a cache's graphs are never replayed once it is
gone. A shape is recorded once its eager forwards on that cache have taken as long as a
recording takes (`CompiledDecoder.rent`): most shapes of a suite's evaluation are met only a
few times, and a recording took ~0.3 s on an H100, the time of dozens of eager forwards.
Recording runs the forward twice (a warm-up, then the capture, which runs nothing), writing the
same keys and values into the same slots as the replay does, so the cache ends as one forward
leaves it. The graphs of a model share one memory pool. A ragged cache (a lane of envs whose
streams differ in length, as in the suite's evaluation) is recorded too: static, it reads every
slot, so its forwards' shapes are its rows and tokens only. Measured on an H100 at batch 1 and
512 (benchmarks/RESULTS.md, "On one H100"); ragged lanes' graphs not yet on a GPU. On a CPU,
tests/test_compiled.py runs the same bookkeeping with the recorded forward re-run on the copied
inputs in place of a replay.

Numerics: the compiled graph fuses and reorders float operations, so results agree with eager
decoding to rounding, not bit for bit (measured in benchmarks/RESULTS.md;
`tests/test_compiled.py` checks that fp32 greedy actions are the same). The weights are read
when a shape compiles; `compiled_decoder` gives a new decoder once they change.
"""

from __future__ import annotations

import dataclasses
import time
import types
import warnings
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from opengato.model.gato import Gato
from opengato.model.inputs import GatoBatch
from opengato.model.kv_cache import KVCache
from opengato.model.packed import block_linears, weights_version

GRAPH_MEMORY = 2 << 30
"""Bytes of packed block weights that one model's compiled graphs may hold together."""
RECORD_COST_S = 0.25
"""What recording a CUDA graph is taken to cost before one has been timed (seconds): on the
second H100 lease, the compiled acting bench's untimed steps (two recordings, then replays)
took 0.62 s at batch 1 and 1.25 s at batch 512 (benchmarks/h100-aa88788/act.json)."""
_clock = time.perf_counter  # times eager forwards, recordings and compiles (tests set a fake one)
CUDA_GRAPHS = 256
"""CUDA graphs one model keeps (they hold no weights: a few small input and output tensors
each, activations in one pool they share)."""


def _forward(model: Gato, batch: GatoBatch, rope, mask: Tensor, cache: KVCache,
             lo: int, hi: int) -> Tensor:  # fmt: skip
    """One decoding forward after the positions are placed: float logits (B, hi - lo) of the
    last token over ids [lo, hi) (what `Gato.next_logits` computes)."""
    h = model.trunk(model.embed(batch), rope, cache, mask, last=True)[:, -1]
    return F.linear(h, model.lm_head.weight[lo:hi]).float()


def _compile(model: Gato) -> Callable:
    """`_forward` over `model`, compiled. The model is closed over, not passed, so that freezing
    makes its weights constants of the graph (packed for oneDNN). The function gets a code object
    of its own: torch.compile keeps graphs and guards per code object, so each shape's graph is
    the only one its guards are checked against, and decoders share no recompile limit."""

    def forward(batch: GatoBatch, rope, mask: Tensor, cache: KVCache, lo: int, hi: int):
        return _forward(model, batch, rope, mask, cache, lo, hi)

    own = types.FunctionType(forward.__code__.replace(), forward.__globals__, "forward", None,
                             forward.__closure__)  # fmt: skip
    compiled = torch.compile(own, dynamic=False, fullgraph=True)
    ready = False

    def call(*args):
        nonlocal ready
        if ready:  # its one graph, for one shape: skip the guards (~0.2 ms a call)
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return compiled(*args)
        # `freezing` is read outside torch.compile's `options`: set it around the compiling call.
        # realize_opcount_threshold=1: a matrix-vector product's input (a norm's output) is
        # computed once, not again inside the loop over each output row (decoding.py `dense`).
        with torch._inductor.config.patch(freezing=True, realize_opcount_threshold=1):
            out = compiled(*args)
        ready = True
        return out

    return call


def _inputs(batch: GatoBatch, rope, mask: Tensor | None, write: Tensor) -> list[Tensor]:
    """The tensors a decoding forward reads besides the weights and the cache's buffers, in a
    fixed order: the batch's, the RoPE rows, the mask, and the cache slots it writes."""
    fields = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    return [t for t in (*fields, *(rope or ()), mask, write) if isinstance(t, Tensor)]


def _clone(t):
    return t.clone() if isinstance(t, Tensor) else t


def _capture(graph: torch.cuda.CUDAGraph, pool, stream: torch.cuda.Stream,
             forward: Callable[[], Tensor]) -> Tensor:  # fmt: skip
    """`forward()` captured into `graph` on `stream`, its memory from `pool`: what
    `torch.cuda.graph(graph, pool, stream)` does, without the two caches it empties on entering
    (the caching allocator's, so that the eager forwards after each recording take their memory
    from the driver again, and the pinned host memory's). A suite's evaluation records up to
    hundreds of graphs (benchmarks/RESULTS.md, "When to record a CUDA graph")."""
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        graph.capture_begin(pool=pool)
        try:
            return forward()
        finally:
            graph.capture_end()


class GraphForward:
    """One decoding forward (`_forward`) for one shape and one static KV cache, recorded as a
    CUDA graph; calling it copies the new inputs into the recorded ones and replays. Off a GPU
    (tests) it re-runs the forward on the copied inputs instead of replaying."""

    def __init__(self, model: Gato, args: tuple, pool=None, stream=None):
        batch, rope, mask, cache, lo, hi = args
        self.model, self.cache = model, weakref.ref(cache)
        self.buffer = cache.k[0].data_ptr(), cache.k[0].shape  # a kept cut keeps the pointer
        # the recorded inputs; the cache is passed at each call, never held (a kept graph must
        # not keep a gone cache's buffers alive: `matches` keeps it from being replayed)
        self.batch = dataclasses.replace(
            batch, **{f.name: _clone(getattr(batch, f.name)) for f in dataclasses.fields(batch)}
        )
        self.rope = None if rope is None else tuple(t.clone() for t in rope)
        self.mask, self.write, self.vocab = _clone(mask), cache._write.clone(), (lo, hi)
        self.inputs = _inputs(self.batch, self.rope, self.mask, self.write)
        self.graph = None
        if cache.k[0].is_cuda:
            cache._write = self.write
            side = stream or torch.cuda.Stream()  # warm up off the default stream, as CUDA
            side.wait_stream(torch.cuda.current_stream())  # graphs ask, then capture there
            with torch.cuda.stream(side):
                self._forward(cache)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            self.out = _capture(self.graph, pool, side, lambda: self._forward(cache))

    def _forward(self, cache: KVCache) -> Tensor:
        return _forward(self.model, self.batch, self.rope, self.mask, cache, *self.vocab)

    def matches(self, cache: KVCache | None) -> bool:
        """Whether this graph was recorded on `cache`, with the buffers it has now."""
        return (cache is not None and self.cache() is cache and bool(cache.k)
                and (cache.k[0].data_ptr(), cache.k[0].shape) == self.buffer)  # fmt: skip

    def __call__(self, *args) -> Tensor:
        batch, rope, mask, cache = args[:4]
        for recorded, new in zip(
            self.inputs, _inputs(batch, rope, mask, cache._write), strict=True
        ):
            recorded.copy_(new)
        cache._write = self.write  # as the graph does: it writes through the recorded slots
        if self.graph is None:
            return self._forward(cache)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites `out`


class CompiledDecoder:
    """`next_logits` of a Gato through compiled graphs (with a cache from `make_cache`):
    torch.compile's on a CPU, CUDA graphs on an NVIDIA GPU."""

    def __init__(self, model: Gato):
        device = next(model.parameters()).device.type
        if device not in ("cpu", "cuda"):
            raise ValueError(f"compiled decoding runs on a CPU or a CUDA GPU, not on {device!r}")
        self.model = model.eval()
        self.cuda = device == "cuda"  # CUDA graphs, one per (shape, cache)
        self.graphs: OrderedDict[tuple, Callable] = OrderedDict()  # least recently used first
        per_graph = sum(model.get_submodule(n).weight.nbytes for n in block_linears(model))
        self.max_graphs = CUDA_GRAPHS if self.cuda else max(4, GRAPH_MEMORY // max(1, per_graph))
        self.pool = torch.cuda.graph_pool_handle() if device == "cuda" else None
        self.stream = torch.cuda.Stream() if device == "cuda" else None  # records the graphs
        self.failed: Exception | None = None
        self._seen: Counter = Counter()
        self.rent = self.cuda
        """When a shape is recorded. True (CUDA graphs): once its eager forwards on that cache
        have taken as long as a recording takes (the mean of those timed so far,
        `RECORD_COST_S` before any), the ski-rental rule: a shape met a few times, as most of a
        suite evaluation's are (median 5 meetings: benchmarks/RESULTS.md), never costs more
        than twice what the best choice would have. False (torch.compile on a CPU, and tests of
        the GPU's bookkeeping): at its second meeting."""
        self._rent: Counter = Counter()  # per key, the seconds its eager forwards took
        self.stats = {"recorded": 0, "record_s": 0.0, "replayed": 0, "eager": 0}
        """Forwards through the decoder so far: graphs recorded (CUDA graphs, or shapes compiled
        on a CPU) and the seconds that took (a CPU's compiling is lazy: its first call counts),
        forwards replayed through a graph, forwards run eagerly (`Gato.next_logits` and shapes
        not yet recorded)."""

    def __deepcopy__(self, memo) -> None:
        return None  # a copy of the model (packing, int8) compiles its own graphs

    def make_cache(self, capacity: int | None = None) -> KVCache:
        """An empty static KV cache (what the compiled graphs read and write)."""
        return self.model.make_cache(capacity, static=True)

    def _due(self, key: tuple) -> bool:
        """Whether a shape not yet recorded is recorded now (`rent`)."""
        if self._seen[key] < 2:
            return False
        if not self.rent:
            return True
        done = self.stats["recorded"]
        return self._rent[key] >= (self.stats["record_s"] / done if done else RECORD_COST_S)

    def _graph(self, key: tuple, args: tuple) -> Callable | None:
        """The compiled forward for this shape (on a GPU, `key` names the cache too), once
        `_due`."""
        if self.failed:
            return None
        if self.cuda:
            hit = self.graphs.get(key)
            if hit is not None and not hit.matches(args[3]):  # another cache at a reused id
                del self.graphs[key]
                self._seen[key], self._rent[key] = 0, 0.0
            if len(self._seen) > 16 * self.max_graphs:  # forget the caches long gone
                self._seen = Counter({k: 2 for k in self.graphs})
                self._rent = Counter()
        self._seen[key] += 1
        if key in self.graphs:
            self.graphs.move_to_end(key)
        elif self._due(key):
            if self.cuda:  # a gone cache's graphs, or a cut one's old shape's, never replay
                for k in [k for k, g in self.graphs.items() if not g.matches(g.cache())]:
                    del self.graphs[k]  # their recorded inputs (a ragged mask: up to ~0.2 GB)
            if len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)
            t0 = _clock()
            if self.cuda:
                made = GraphForward(self.model, args, self.pool, self.stream)
                self.stats["record_s"] += _clock() - t0
            else:
                made = _timed_first_call(_compile(self.model), self.stats)
            self.stats["recorded"] += 1
            self.graphs[key] = made
        return self.graphs.get(key)

    @torch.no_grad()
    def next_logits(
        self, batch: GatoBatch, cache: KVCache | None = None, vocab: tuple[int, int] | None = None
    ) -> Tensor:
        """As `Gato.next_logits`; compiled when `cache` is static, else the model's own. A
        ragged cache's forwards are recorded as CUDA graphs on a GPU (a policy lane of envs
        whose streams differ in length: the suite's evaluation) and run eagerly on a CPU, where
        its many shapes would each compile for seconds; a `rows` view of one (a chunk of a big
        forward's rows) always runs eagerly."""
        model = self.model
        if cache is None or not cache.static or cache.view or (cache.ragged and not self.cuda):
            self.stats["eager"] += 1
            return model.next_logits(batch, cache, vocab)
        B, T = batch.ids.shape
        cfg, weight = model.cfg, model.lm_head.weight
        cache.allocate(B, cfg.n_head, cfg.n_embd // cfg.n_head, weight.dtype, weight.device)
        model.check_obs_pos(batch.obs_pos)  # the graph leaves it out
        rope, mask = model.positions(T, cache, weight.dtype, weight.device)
        lo, hi = vocab if vocab is not None else (0, cfg.vocab_size)
        args = (batch, rope, mask, cache, lo, hi)
        key = (B, T, batch.patches.shape[0], lo, hi) + ((id(cache),) if self.cuda else ())
        logits = None
        try:
            graph = self._graph(key, args) if cache.length else None
            if graph is not None:
                logits = graph(*args)
        except Exception as e:  # compiling or recording failed before anything ran: go eager
            self.failed = e
            msg = f"compiled decoding failed, decoding eagerly from here on ({e!r})"
            warnings.warn(msg, stacklevel=2)
        if logits is None:
            t0 = _clock()
            logits = _forward(model, *args)
            if self.rent and cache.length and not self.failed:  # a recordable shape's rent
                if logits.is_cuda:  # the device's time too (sampling waits for it anyway)
                    torch.cuda.synchronize()
                self._rent[key] += _clock() - t0
            self.stats["eager"] += 1
        else:
            self.stats["replayed"] += 1
        cache.advance(T)
        return logits


def _timed_first_call(call: Callable, stats: dict) -> Callable:
    """`call`, its first call's seconds (when torch.compile compiles) added to
    `stats["record_s"]`."""
    first = True

    def timed(*args):
        nonlocal first
        if not first:
            return call(*args)
        t0, first = _clock(), False
        try:
            return call(*args)
        finally:
            stats["record_s"] += _clock() - t0

    return timed


def decoding_stats(model: Gato) -> dict | None:
    """The `stats` of the model's compiled decoder, if it has one (`--weights compiled`)."""
    hit = model.__dict__.get("_compiled_decoder")
    return None if hit is None or hit[1] is None else dict(hit[1].stats, cuda=hit[1].cuda)


def compiled_decoder(model: Gato) -> CompiledDecoder:
    """The model's compiled decoder, kept on the model (so that its graphs serve every later
    policy, e.g. each episode of `opengato serve`, and go when the model goes) and made anew
    when any weight changed since."""
    version = weights_version(model)
    hit = model.__dict__.get("_compiled_decoder")
    if hit is None or hit[0] != version or hit[1] is None:
        hit = (version, CompiledDecoder(model))
        model.__dict__["_compiled_decoder"] = hit
    return hit[1]
