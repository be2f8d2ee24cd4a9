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

Numerics: the compiled graph fuses and reorders float operations, so results agree with eager
decoding to rounding, not bit for bit (measured in benchmarks/RESULTS.md; `tests/test_compiled.py`
checks that fp32 greedy actions are the same). The weights are read when a shape compiles; `compiled_decoder` gives a new decoder
once they change.
"""

from __future__ import annotations

import types
import warnings
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


class CompiledDecoder:
    """`next_logits` of a Gato through compiled graphs (with a cache from `make_cache`)."""

    def __init__(self, model: Gato):
        if next(model.parameters()).device.type != "cpu":
            raise ValueError("compiled decoding is built and measured for the CPU only so far")
        self.model = model.eval()
        self.graphs: OrderedDict[tuple, Callable] = OrderedDict()  # least recently used first
        per_graph = sum(model.get_submodule(n).weight.nbytes for n in block_linears(model))
        self.max_graphs = max(4, GRAPH_MEMORY // max(1, per_graph))
        self.failed: Exception | None = None
        self._seen: Counter = Counter()

    def __deepcopy__(self, memo) -> None:
        return None  # a copy of the model (packing, int8) compiles its own graphs

    def make_cache(self, capacity: int | None = None) -> KVCache:
        """An empty static KV cache (what the compiled graphs read and write)."""
        return self.model.make_cache(capacity, static=True)

    def _graph(self, key: tuple) -> Callable | None:
        """The compiled forward for this shape: made the second time the shape is seen."""
        if self.failed:
            return None
        self._seen[key] += 1
        if key in self.graphs:
            self.graphs.move_to_end(key)
        elif self._seen[key] >= 2:
            if len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)
            self.graphs[key] = _compile(self.model)
        return self.graphs.get(key)

    @torch.no_grad()
    def next_logits(
        self, batch: GatoBatch, cache: KVCache | None = None, vocab: tuple[int, int] | None = None
    ) -> Tensor:
        """As `Gato.next_logits`; compiled when `cache` is static, else the model's own."""
        model = self.model
        if cache is None or not cache.static:
            return model.next_logits(batch, cache, vocab)
        B, T = batch.ids.shape
        cfg, weight = model.cfg, model.lm_head.weight
        cache.allocate(B, cfg.n_head, cfg.n_embd // cfg.n_head, weight.dtype, weight.device)
        model.check_obs_pos(batch.obs_pos)  # the graph leaves it out
        rope, mask = model.positions(T, cache, weight.dtype, weight.device)
        lo, hi = vocab if vocab is not None else (0, cfg.vocab_size)
        args = (batch, rope, mask, cache, lo, hi)
        key = (B, T, batch.patches.shape[0], lo, hi)
        graph = self._graph(key) if cache.length else None
        logits = None
        if graph is not None:
            try:
                logits = graph(*args)
            except Exception as e:  # compiling failed before anything ran: go on eagerly
                self.failed = e
                msg = f"compiled decoding failed, decoding eagerly from here on ({e!r})"
                warnings.warn(msg, stacklevel=2)
        if logits is None:
            logits = _forward(model, *args)
        cache.advance(T)
        return logits


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
