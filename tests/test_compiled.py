"""Compiled decoding (`--weights compiled`, model/compiled.py): the static KV cache, the same
greedy actions as eager decoding through real Inductor graphs, and its fallbacks."""

from __future__ import annotations

import gc
import shutil
from functools import partial

import numpy as np
import pytest
import torch

import opengato.model.compiled as compiled
from opengato.agent.eval_config import EvalConfig
from opengato.agent.policy import GatoPolicy
from opengato.agent.rollout import make_policy
from opengato.batches.batch import make_batch
from opengato.model.compiled import CompiledDecoder, compiled_decoder, decoding_stats
from opengato.model.gato import Gato
from opengato.model.packed import for_cpu_inference
from opengato.tokens.spaces import stack as stack_values
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig
from tests.test_packed import ACT, OBS, _row, decode, episode_batch, model_for, rollout
from tests.test_policy import CUDA, babyai_envs_and_prompts, tiny_model

needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile's CPU backend needs a C++ compiler",
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(TokenizerConfig(text_vocab_size=1024))


def static_decode(model, batch, vocab=None):
    """`decode` (prefill, then one token at a time) through a static cache, eagerly."""
    model.make_cache = partial(Gato.make_cache, model, static=True)
    try:
        return decode(model, batch, vocab)
    finally:
        del model.make_cache


def test_static_cache_attends_as_the_ring_buffer_does(tok):
    """Read whole with a mask (never-written and forgotten slots hidden), the static cache gives
    the ring buffer's logits: from empty, and across crops that wrap around the buffer."""
    model = model_for(tok)
    batch = episode_batch(tok, steps=5)
    # fp32 sums in another order: logits up to ~18 differ by up to 2e-5 on an Intel Xeon (1e-6
    # of their scale); a slot wrongly seen or hidden moves them by whole units
    for a, b in zip(decode(model, batch), static_decode(model, batch), strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-5)
    cache = model.make_cache(capacity=32, static=True)
    assert cache.static and cache.select([0]).static
    runs = {}
    for static in (False, True):
        model.make_cache = partial(Gato.make_cache, model, static=static)
        runs[static] = rollout(GatoPolicy(model, tok, OBS, ACT, 2, packed=False), 20)
        del model.make_cache
    assert runs[True] == runs[False]


@needs_compiler
def test_compiled_policy_acts_as_the_eager_one(tok):
    """fp32 greedy actions through compiled graphs equal the packed eager policy's over a
    rollout whose window (64 tokens, 11 a step) slides around the cache many times; each
    repeated shape (the step's prefill, one token) compiled once, and a second policy on the
    same model reuses the graphs."""
    model = model_for(tok)
    eager = rollout(GatoPolicy(model, tok, OBS, ACT, 2), 25)
    policy = GatoPolicy(model, tok, OBS, ACT, 2, compile=True)
    assert isinstance(policy.net, CompiledDecoder)
    assert rollout(policy, 25) == eager
    graphs = dict(policy.net.graphs)
    assert policy.net.failed is None
    # (envs, tokens): each step feeds the last action token, 7 observation tokens and the
    # separator, then the other 2 action tokens one at a time
    assert sorted(key[:2] for key in graphs) == [(2, 1), (2, 9)]
    again = GatoPolicy(model, tok, OBS, ACT, 2, compile=True)
    assert again.net is policy.net
    assert rollout(again, 5) == eager[:5] and again.net.graphs == graphs  # nothing new


def run_with_restart(policy: GatoPolicy) -> list:
    """Greedy actions of 2 envs over 30 steps: env 1 finishes at step 10 (its lane's cache is
    cut to env 0's row, in place) and restarts at step 14 (in a lane and cache of its own)."""
    rng, out = np.random.default_rng(0), []
    policy.reset()
    for t in range(30):
        if t == 14:
            policy.reset_env(1)
        active = np.array([True, not 10 <= t < 14])
        out.append(policy.act(rng.uniform(-1, 1, (2, 7)), active).round(4).tolist())
    return out


def test_cuda_graph_bookkeeping_on_the_cpu(tok, monkeypatch):
    """The GPU path (CUDA graphs, model/compiled.py `GraphForward`) run on the CPU, where a
    graph's replay re-runs the recorded forward on the inputs copied into it: the same greedy
    actions as eager decoding while an env finishes (its lane's cache is cut, in place: a graph
    of the old shape no longer matches it) and restarts (a lane and cache of its own); a graph
    per (shape, cache), never used with
    another cache (a new cache may get a gone one's id), and none kept for a cache once it is
    gone."""
    recorded = []

    class Counted(compiled.GraphForward):
        def __init__(self, model, args, *rest):
            super().__init__(model, args, *rest)
            recorded.append(id(args[3]))

    monkeypatch.setattr(compiled, "GraphForward", Counted)
    model = model_for(tok)
    eager = run_with_restart(GatoPolicy(model, tok, OBS, ACT, 2))
    decoder = compiled_decoder(model)
    decoder.cuda = True  # the GPU's bookkeeping; GraphForward replays by re-running off a GPU
    policy = GatoPolicy(model, tok, OBS, ACT, 2, compile=True)
    assert policy.net is decoder and run_with_restart(policy) == eager and decoder.failed is None
    graphs = list(decoder.graphs.items())
    assert all(isinstance(g, Counted) for _, g in graphs)
    # the first lane's cache, its cut, the restarted env's: each the step's prefill, one token
    assert len(recorded) == 3 * 2
    stats = decoding_stats(model)  # what `opengato eval` reports of it
    assert stats["recorded"] == len(recorded) and stats["record_s"] > 0 and stats["cuda"]
    assert stats["replayed"] > len(recorded) and stats["eager"] > 0
    live = [lane.cache for lane in policy.lanes]
    assert sum(g.matches(c) for _, g in graphs for c in live) == 2 * len(live)
    assert len(graphs) == 2 * len(live)  # the cut's old shape's graphs were let go
    del live
    policy.reset()  # new caches: the old graphs are never replayed on them
    assert not any(g.matches(lane.cache) for _, g in graphs for lane in policy.lanes)
    gc.collect()
    assert all(g.cache() is None for _, g in graphs)  # a kept graph holds no cache's buffers


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_cuda_graphs_of_ragged_lanes_act_as_eager_ones(tok, monkeypatch, device):
    """A ragged lane (BabyAI envs whose prompts and missions differ in length, the suite's
    evaluation) through CUDA graphs (on the CPU: the GPU path's bookkeeping, a replay re-running
    the forward): its forwards recorded per shape and replayed on a static ragged cache, which
    reads every slot, give each env the eager ragged lane's logits to rounding, while the window
    slides, envs finish and one restarts."""
    replays = []

    class Counted(compiled.GraphForward):
        def __call__(self, *args):
            replays.append(args[3].ragged)
            return super().__call__(*args)

    monkeypatch.setattr(compiled, "GraphForward", Counted)
    n, steps = 6, 30
    envs, prompts = babyai_envs_and_prompts(tok, n)
    space, act_space = envs[0].observation_space, envs[0].action_space
    model = tiny_model(tok, context_len=400).to(device)  # ~3 BabyAI steps a window: slides
    decoder = compiled_decoder(model)
    decoder.cuda, decoder.rent = True, False  # the GPU's bookkeeping (on a CPU too), recording
    seen = {}  # every shape at its second meeting
    for compile in (False, True):
        policy = GatoPolicy(model, tok, space, act_space, n, packed=False, compile=compile)
        advance, seen[compile] = policy._advance, []

        def recorded(lane, new, advance=advance, compile=compile):
            logits = advance(lane, new)
            seen[compile][-1].update(zip(lane.envs, logits, strict=True))
            return logits

        policy._advance = recorded
        policy.reset(prompts)
        obs = [e.reset(seed=i)[0] for i, e in enumerate(envs)]
        active = np.ones(n, bool)
        for t in range(steps):
            if t == 12:
                active[[1, 4]] = False  # two envs finish: the lane's cache is cut in place
            if t == 20:
                policy.reset_env(4, prompts[2])  # one restarts, in a lane of its own
                active[4] = True
            seen[compile].append({})
            policy.act(stack_values(space, obs), active)
    assert policy.net.failed is None and any(lane.cache.ragged for lane in policy.lanes)
    for eager, graphs in zip(seen[False], seen[True], strict=True):
        assert eager.keys() == graphs.keys()
        for e in eager:  # a static cache sums over every slot, in another order
            torch.testing.assert_close(graphs[e], eager[e], atol=1e-4, rtol=1e-4)
    assert sum(replays) > steps // 2  # most of the ragged lane's forwards (one a step) replayed


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_auto_weights_are_cuda_graphs_on_a_gpu_and_packed_on_a_cpu(tok, device):
    """`--weights auto` (the suite's evaluation): CUDA graphs on a GPU, packed weights on a CPU."""
    model = model_for(tok).to(device)
    policy = make_policy((model, tok, {}), OBS, ACT, 2, EvalConfig(checkpoint="x", weights="auto"))
    if device == "cuda":
        assert isinstance(policy.net, CompiledDecoder)
    else:
        assert policy.net is for_cpu_inference(model) and policy.net is not model  # packed


def test_compile_failure_falls_back_to_eager(tok, monkeypatch):
    """A graph that cannot be built warns once; decoding goes on eagerly with the same result."""
    model = model_for(tok)
    eager = rollout(GatoPolicy(model, tok, OBS, ACT, 2), 6)

    def broken(model):
        def call(*args):
            raise RuntimeError("no C++ compiler")

        return call

    monkeypatch.setattr(compiled, "_compile", broken)
    policy = GatoPolicy(model, tok, OBS, ACT, 2, compile=True)
    with pytest.warns(UserWarning, match="compiled decoding failed"):
        assert rollout(policy, 6) == eager
    assert isinstance(policy.net.failed, RuntimeError)


def test_graph_memory_and_weight_changes(tok, monkeypatch):
    """Past its graph memory a decoder drops its least recently used graph; a weight change
    gives a new decoder; a copy of the model (packing) does not carry it; off a CPU or a CUDA
    GPU it is refused."""
    made = []
    monkeypatch.setattr(compiled, "GRAPH_MEMORY", 1)  # room for the fewest graphs: 4
    monkeypatch.setattr(  # an uncompiled stand-in for the graph: the same forward
        compiled, "_compile", lambda model: made.append(model) or partial(compiled._forward, model)
    )
    model = model_for(tok)
    eager = rollout(GatoPolicy(model, tok, OBS, ACT, 2), 6)
    policy = GatoPolicy(model, tok, OBS, ACT, 2, compile=True)
    assert rollout(policy, 6) == eager and len(made) == 2  # the step's prefill, one token
    decoder = policy.net
    batch = episode_batch(tok)
    for T in range(2, 5):  # three more shapes, each seen twice: the first two graphs go
        for _ in range(2):
            cache = decoder.make_cache()  # its first forward (a prompt's) is never compiled
            decoder.next_logits(make_batch([_row(batch, 0, 1)]), cache)
            decoder.next_logits(make_batch([_row(batch, 1, 1 + T)]), cache)
    assert len(made) == 5 and len(decoder.graphs) == 4
    assert [key[1] for key in decoder.graphs] == [1, 2, 3, 4]  # tokens; 9 (the prefill) went
    first = compiled_decoder(model)
    assert first is policy.net and compiled_decoder(model) is first
    assert for_cpu_inference(model).__dict__.get("_compiled_decoder", (0, None))[1] is None
    with torch.no_grad():
        model.blocks[0].ffn.up.weight.mul_(-1.0)
    assert compiled_decoder(model) is not first
    with pytest.raises(ValueError, match="CPU or a CUDA GPU"):
        CompiledDecoder(model_for(tok).to("meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_act_as_eager_decoding(tok):
    """On a GPU: greedy actions through recorded CUDA graphs equal eager decoding's (the same
    kernels replayed), over a rollout whose caches are cut and restarted."""
    model = model_for(tok).cuda()
    eager = run_with_restart(GatoPolicy(model, tok, OBS, ACT, 2))
    compiled_decoder(model).rent = False  # every shape recorded at its second meeting
    policy = GatoPolicy(model, tok, OBS, ACT, 2, compile=True)
    assert run_with_restart(policy) == eager
    assert policy.net.failed is None and len(policy.net.graphs) == 6
    assert all(g.graph is not None for g in policy.net.graphs.values())


def test_cuda_graphs_are_recorded_once_eager_forwards_cost_a_recording(tok, monkeypatch):
    """The ski-rental rule of CUDA graphs (`CompiledDecoder.rent`), with a clock that ticks one
    second at each reading: a shape is recorded once its eager forwards have taken as long as a
    recording (`RECORD_COST_S` before any was timed, then the mean of those timed), and the
    actions are eager decoding's throughout."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(compiled, "_clock", lambda: float(next(ticks)))
    monkeypatch.setattr(compiled, "RECORD_COST_S", 3.0)
    model = model_for(tok)
    eager = rollout(GatoPolicy(model, tok, OBS, ACT, 2), 8)
    decoder = compiled_decoder(model)
    decoder.cuda = decoder.rent = True  # the GPU's rule, on the CPU
    seen = []
    record = decoder._graph

    def graph(key, args):
        made = key not in decoder.graphs
        out = record(key, args)
        if made and key in decoder.graphs:
            seen.append((decoder._seen[key], decoder._rent[key]))
        return out

    monkeypatch.setattr(decoder, "_graph", graph)
    policy = GatoPolicy(model, tok, OBS, ACT, 2, compile=True)
    assert rollout(policy, 8) == eager and decoder.failed is None
    # Each eager forward of a shape on a cache is one tick of rent, and a recording takes one
    # tick (GraphForward between two readings). The first shape is recorded at its 4th meeting,
    # after three eager forwards (the prior's 3 s); the next ones once their rent reaches the
    # timed recordings' mean, 1 s: at their second meeting, or at once if already past it.
    assert seen[0] == (4, 3.0) and len(seen) == 2  # the prefill's shape and a token's
    assert seen[1][1] >= 1.0 and (2, 1.0) in seen[1:]
    assert decoder.stats["record_s"] == decoder.stats["recorded"] == len(seen)


def test_decoding_with_a_mask_leaves_cudnn_attention_out_on_a_gpu(monkeypatch):
    """cuDNN builds a graph for each new input shape, and a decoding cache's length changes at
    nearly every forward until its window is full (decoding.CUDNN_ATTENTION): a GPU forward over
    a cache with a mask runs its blocks with cuDNN's SDPA off; anything else is left alone."""
    from types import SimpleNamespace

    from opengato.model import decoding

    gpu, cpu, cache, mask = SimpleNamespace(is_cuda=True), torch.zeros(1), object(), torch.zeros(1)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with decoding.attention_backends(gpu, cache, mask):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()
    for args in [(cpu, cache, mask), (gpu, None, mask), (gpu, cache, None)]:
        with decoding.attention_backends(*args):
            assert torch.backends.cuda.cudnn_sdp_enabled()
    monkeypatch.setattr(decoding, "CUDNN_ATTENTION", True)
    with decoding.attention_backends(gpu, cache, mask):
        assert torch.backends.cuda.cudnn_sdp_enabled()
