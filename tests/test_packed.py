"""Fast acting on a CPU: packed weights (the default) and int8 weights (opt-in) against the
model's own weights, and the policy's sliding window over the ring-buffer KV cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from opengato.agent.policy import GatoPolicy
from opengato.batches.batch import make_batch
from opengato.model.checkpoint import load_agent
from opengato.model.gato import Gato
from opengato.model.packed import PackedLinear, for_cpu_inference, packed_copy
from opengato.model.presets import make_config
from opengato.model.quantize import quantize_int8
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

OBS = spaces.Box(-1.0, 1.0, (7,), np.float32)
ACT = spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(TokenizerConfig(text_vocab_size=1024))


def model_for(tok: Tokenizer, dtype=torch.float32, seed: int = 0) -> Gato:
    torch.manual_seed(seed)
    model = Gato(make_config("gato-tiny", tok.vocab_size, context_len=64, bias=True)).eval()
    with torch.no_grad():  # large weights: greedy actions that depend on the inputs
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model.to(dtype)


def episode_batch(tok: Tokenizer, steps: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
    act = rng.uniform(-1, 1, (steps, 3)).astype(np.float32)
    return make_batch([tok.tokenize_episode(OBS, ACT, obs, act)])


def decode(model: Gato, batch, vocab=None) -> list[torch.Tensor]:
    """Logits of a prefill of all but the last 4 tokens, then one token at a time."""
    cache, T = model.make_cache(), batch.ids.shape[1]
    cut = lambda t0, t1: make_batch([_row(batch, t0, t1)])  # noqa: E731
    out = [model.next_logits(cut(0, T - 4), cache, vocab)]
    out += [model.next_logits(cut(t, t + 1), cache, vocab) for t in range(T - 4, T)]
    return out


def _row(batch, t0: int, t1: int):
    from opengato.tokens.seq import TokenSeq

    return TokenSeq(
        ids=batch.ids[0, t0:t1].numpy().astype(np.int32),
        kind=batch.kind[0, t0:t1].numpy().astype(np.uint8),
        obs_pos=batch.obs_pos[0, t0:t1].numpy().astype(np.int16),
        target_mask=np.zeros(t1 - t0, bool),
        timestep_starts=np.zeros(0, np.int64),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_copy_computes_what_the_model_does_and_shares_its_weights(tok, dtype):
    model = model_for(tok, dtype)
    packed = packed_copy(model)
    assert isinstance(packed.blocks[0].attn.qkv, PackedLinear)
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)  # the model itself is untouched
    assert packed.wte.weight is model.wte.weight
    assert packed.blocks[0].ffn.up.weight is model.blocks[0].ffn.up.weight
    batch = episode_batch(tok)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.15, rtol=0.02)
    for a, b in zip(decode(model, batch), decode(packed, batch), strict=True):
        torch.testing.assert_close(b, a, **tol)
    # with gradients on (training), the plain path runs and gradients reach the shared weights
    packed.zero_grad()
    x = torch.randn(2, 5, model.cfg.n_embd, dtype=dtype)
    packed.blocks[0].attn.qkv(x).sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_the_packed_copy_is_rebuilt_when_weights_change(tok):
    model = model_for(tok)
    first = for_cpu_inference(model)
    assert first is not model and for_cpu_inference(model) is first  # kept per model
    with torch.no_grad():
        model.blocks[0].ffn.up.weight.mul_(-1.0)  # as an optimiser step would, in place
    second = for_cpu_inference(model)
    assert second is not first
    batch = episode_batch(tok)
    torch.testing.assert_close(
        decode(second, batch)[-1], decode(model, batch)[-1], atol=1e-4, rtol=1e-4
    )


def rollout(policy: GatoPolicy, steps: int, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    policy.reset()
    return [policy.act(rng.uniform(-1, 1, (2, 7))).round(4).tolist() for _ in range(steps)]


def test_packed_plain_and_int8_policies(tok):
    """Greedy actions with packed weights equal those with the model's own weights over a
    rollout that slides the window around the ring-buffer cache many times (64 tokens, 11 a
    step); int8 weights, a different model, act through the same sliding window."""
    model = model_for(tok)
    runs = {
        name: rollout(GatoPolicy(m, tok, OBS, ACT, 2, packed=packed), 30)
        for name, m, packed in [
            ("packed", model, True),
            ("plain", model, False),
            ("int8", quantize_int8(model), True),
        ]  # fmt: skip
    }
    assert runs["packed"] == runs["plain"]
    assert len({str(a) for a in runs["plain"]}) > 10  # not a constant policy
    int8 = np.array(runs["int8"])
    assert int8.shape == (30, 2, 3) and np.all(np.abs(int8) <= 1.0)
    assert int8.tolist() != runs["plain"]


def test_int8_copy_leaves_the_model_alone(tok):
    model = model_for(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_int8(model)
    assert getattr(q, "int8", False) and not isinstance(q.blocks[0].attn.qkv, nn.Linear)
    assert isinstance(q.lm_head, nn.Linear)  # the tied output layer stays in float
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert for_cpu_inference(q) is q  # nothing to pack in an int8 model
    batch = episode_batch(tok)
    a, b = decode(model, batch)[-1], decode(q, batch)[-1]
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.95
    m, _, _ = load_agent("random:gato-tiny", int8=True)
    assert getattr(m, "int8", False)


def test_int8_actions_do_not_depend_on_the_batch(tok):
    """An env's int8 actions are those it gets alone, whatever shares its forwards (other envs,
    another prompt length: a ragged lane's pads). fbgemm quantises a matmul's input with one
    scale for the whole batch; each token is first scaled to [-1, 1] (quantize._PerToken), so
    that scale is the same and a token is quantised by its own range. Without that env 0's
    logits differed by 0.45 at the first step."""
    q = quantize_int8(model_for(tok))
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (30, 3, 7))
    prompt = tok.tokenize_episode(OBS, ACT, obs[0, :2].astype(np.float32), obs[1, :2, :3])
    together = GatoPolicy(q, tok, OBS, ACT, 3)
    together.reset([None, prompt, None])  # a ragged lane: rows of other lengths, with pads
    alone = GatoPolicy(q, tok, OBS, ACT, 1)
    logits = {"together": [], "alone": []}
    for name, policy in (("together", together), ("alone", alone)):
        real = policy._sample
        policy._sample = lambda x, r, name=name, real=real: logits[name].append(x[:1]) or real(x, r)
    for t in range(30):  # 11 tokens a step in a 64-token window: it slides
        a, b = together.act(obs[t]), alone.act(obs[t, :1])
        np.testing.assert_array_equal(a[:1], b)
    # equal to fp32 rounding, except where that rounding moves a value across an int8 step (one
    # token in ~100 here, by ~0.1): the per-batch scale moved every value (0.45 at the first)
    diffs = np.array([float((x - y).abs().max()) for x, y in zip(*logits.values(), strict=True)])
    assert np.mean(diffs < 1e-4) > 0.9 and diffs.max() < 0.5, diffs
