"""GatoPolicy: acting in every kind of space, KV cache == recompute, lanes, text generation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from opengato.agent.generation import generate_text, generate_texts
from opengato.agent.policy import GatoPolicy
from opengato.batches.batch import make_batch
from opengato.kinds import Kind
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.tokens.seq import TokenSeq, head_timesteps, tail, text_seq
from opengato.tokens.spaces import index as index_value
from opengato.tokens.spaces import stack as stack_values
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(TokenizerConfig(text_vocab_size=1024))


def tiny_model(tok: Tokenizer, context_len: int = 256, seed: int = 0, large: bool = True) -> Gato:
    """gato-tiny, by default with large weights: its actions depend on what it sees (at the
    usual small init, an untrained model picks nearly the same tokens whatever the input, and
    tests that compare two ways of acting would see little)."""
    torch.manual_seed(seed)
    model = Gato(make_config("gato-tiny", tok.vocab_size, context_len=context_len, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            if large and p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model


class ImageEnv(gym.Env):
    """A synthetic env with an image observation (uint8 32x32x3) beside a float vector."""

    def __init__(self):
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (32, 32, 3), np.uint8),
                "state": spaces.Box(-1.0, 1.0, (2,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self):
        return {
            "image": self.np_random.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "state": self.np_random.uniform(-1, 1, 2).astype(np.float32),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(-np.abs(action).sum()), False, self.t >= 20, {}


def babyai_env() -> gym.Env:
    import minigrid  # noqa: F401  (registers the BabyAI ids)

    from opengato.suites import BabyAIObs

    return BabyAIObs(gym.make("BabyAI-GoToLocal-v0", disable_env_checker=True))


ENVS = {
    "discrete": lambda: gym.make("CartPole-v1"),
    "continuous": lambda: gym.make("Pendulum-v1"),
    "dict-text": babyai_env,
    "image": ImageEnv,
}


def rollout(policy: GatoPolicy, envs: list[gym.Env], steps: int, seed: int = 0) -> list:
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    space = envs[0].observation_space
    out = []
    for _ in range(steps):
        actions = policy.act(stack_values(space, obs))
        for i, env in enumerate(envs):
            a = index_value(env.action_space, actions, i)
            assert env.action_space.contains(a), (a, env.action_space)
            out.append(np.asarray(a).tolist())
            obs[i], _, term, trunc, _ = env.step(a)
            if term or trunc:
                obs[i] = env.reset()[0]
    return out


@pytest.mark.parametrize("kind", list(ENVS))
def test_acts_in_every_space_kind(tok, kind):
    envs = [ENVS[kind]() for _ in range(3)]
    model = tiny_model(tok, context_len=128)  # small: the window slides during the rollout
    policy = GatoPolicy(
        model, tok, envs[0].observation_space, envs[0].action_space, 3, "temperature", seed=1
    )
    rollout(policy, envs, 6)


@pytest.mark.parametrize("kind", ["discrete", "continuous", "dict-text", "image"])
def test_kv_cache_matches_recompute(tok, kind):
    """Greedy actions with the cache equal those of recomputing the window each forward, also
    after the window starts sliding (re-prefill mode is exact)."""
    model = tiny_model(tok, context_len=64)  # every kind overflows it within the rollout
    with torch.no_grad():  # large weights: greedy actions that depend on the inputs
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    steps = 16 if kind != "dict-text" else 3
    results = []
    for use_cache, overflow in [(True, "reprefill"), (False, "slide")]:
        envs = [ENVS[kind]() for _ in range(2)]
        policy = GatoPolicy(
            model, tok, envs[0].observation_space, envs[0].action_space, 2,
            use_cache=use_cache, overflow=overflow,
        )  # fmt: skip
        results.append(rollout(policy, envs, steps))
    assert results[0] == results[1]
    assert len({str(a) for a in results[0]}) > 1  # not a constant policy


def test_incremental_logits_match_full_forward(tok):
    """The cache path (prefill, then one token at a time) gives the full forward's logits."""
    env = gym.make("Pendulum-v1")
    model = tiny_model(tok).eval()
    obs, _ = env.reset(seed=0)
    ep = tok.tokenize_episode(
        env.observation_space, env.action_space, np.stack([obs] * 5), np.zeros((5, 1), np.float32)
    )
    full = model(make_batch([ep]))[0][0]  # (T, V)
    cache = model.make_cache()

    def part(lo: int, hi: int) -> TokenSeq:  # tokens [lo, hi) (no images here)
        return TokenSeq(
            ep.ids[lo:hi],
            ep.kind[lo:hi],
            ep.obs_pos[lo:hi],
            ep.target_mask[lo:hi],
            ep.timestep_starts[:1],
        )

    logits = [model.next_logits(make_batch([part(0, 10)]), cache)[0]]
    logits += [
        model.next_logits(make_batch([part(t, t + 1)]), cache)[0] for t in range(10, len(ep))
    ]
    torch.testing.assert_close(torch.stack(logits), full[9:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ragged", [True, False])
def test_prompt_and_lanes(tok, ragged):
    """Per-env prompts of different lengths share one lane through a ragged cache, or (ragged
    False) split the envs into lanes; finished envs leave; reset_env restarts one env alone."""
    envs = [babyai_env() for _ in range(3)]
    model = tiny_model(tok, context_len=512)
    policy = GatoPolicy(model, tok, envs[0].observation_space, envs[0].action_space, 3,
                        ragged=ragged)  # fmt: skip
    env = envs[0]
    obs, _ = env.reset(seed=5)
    demo = tok.tokenize_episode(
        env.observation_space, env.action_space, stack_values(env.observation_space, [obs] * 4),
        np.zeros(4, np.int64),
    )  # fmt: skip
    prompt = head_timesteps(demo, 300)
    assert len(prompt) <= 300 and len(prompt) in demo.timestep_starts
    policy.reset([prompt, None, prompt])
    assert sorted(len(lane.envs) for lane in policy.lanes) == ([3] if ragged else [1, 2])
    obs = [e.reset(seed=i)[0] for i, e in enumerate(envs)]
    policy.act(stack_values(env.observation_space, obs))
    policy.act(stack_values(env.observation_space, obs), active=np.array([True, False, True]))
    assert policy.active_envs == [0, 2]
    policy.reset_env(1)
    assert policy.active_envs == [0, 1, 2]
    actions = policy.act(stack_values(env.observation_space, obs))
    assert all(
        env.action_space.contains(index_value(env.action_space, actions, i)) for i in range(3)
    )


CUDA = pytest.param(
    "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
)


def babyai_envs_and_prompts(tok: Tokenizer, n: int) -> tuple[list[gym.Env], list[TokenSeq]]:
    """n BabyAI envs, and n prompts of different lengths (0 to 900 tokens) cut from one
    demonstration: the streams of a ragged lane."""
    envs = [babyai_env() for _ in range(n)]
    space, act_space = envs[0].observation_space, envs[0].action_space
    obs0, _ = envs[0].reset(seed=5)
    demo = tok.tokenize_episode(space, act_space, stack_values(space, [obs0] * 6),
                                np.zeros(6, np.int64))  # fmt: skip
    return envs, [head_timesteps(demo, k) for k in (0, 170, 350, 520, 700, 900)[:n]]


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_ragged_lanes_act_as_a_lane_per_length(tok, device):
    """BabyAI envs with prompts and missions of different lengths, a window that slides many
    times, envs that finish and restart: one ragged lane gives every env the logits the lanes
    per length give it (to rounding), in fewer forward passes. (On a GPU too: the ragged
    cache's writes, row views and per-row masks are the same torch ops on other kernels.)"""
    n, steps = 6, 40
    envs, prompts = babyai_envs_and_prompts(tok, n)
    space, act_space = envs[0].observation_space, envs[0].action_space
    assert len({len(p) for p in prompts}) == n
    model = tiny_model(tok, context_len=400).to(device)  # ~3 BabyAI steps a window: slides a step
    calls = {True: 0, False: 0, "chunked": 0}
    seen: dict = {True: [], False: [], "chunked": []}  # per step: {env: its logits}
    for ragged in (True, False, "chunked"):  # chunked: a forward's rows 2-3 at a time
        chunk = 500 if ragged == "chunked" else 1 << 20
        policy = GatoPolicy(model, tok, space, act_space, n, ragged=bool(ragged),
                            chunk_tokens=chunk)  # fmt: skip
        # (the packed model is shared by both policies: wrap its class's method, not the other's)
        forward, advance = type(policy.net).next_logits.__get__(policy.net), policy._advance

        def counted(*args, ragged=ragged, forward=forward):
            calls[ragged] += 1
            return forward(*args)

        def recorded(lane, new, ragged=ragged, advance=advance):
            logits = advance(lane, new)
            seen[ragged][-1].update(zip(lane.envs, logits, strict=True))
            return logits

        policy.net.next_logits, policy._advance = counted, recorded
        policy.reset(prompts)
        obs = [e.reset(seed=i)[0] for i, e in enumerate(envs)]
        assert len({len(o["mission"]) for o in obs}) > 2  # missions of different lengths
        active = np.ones(n, bool)
        for t in range(steps):
            if t == 12:
                active[[1, 4]] = False  # two envs finish
            if t == 20:
                policy.reset_env(4, prompts[2])  # one restarts, in a lane of its own
                active[4] = True
            seen[ragged].append({})
            policy.act(stack_values(space, obs), active)
    for got, chunked, want in zip(seen[True], seen["chunked"], seen[False], strict=True):
        assert got.keys() == want.keys() == chunked.keys()
        for e in got:
            torch.testing.assert_close(got[e], want[e], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(chunked[e], want[e], atol=1e-4, rtol=1e-4)
    assert calls[True] * 2 < calls[False] and calls[True] < calls["chunked"], calls


def test_make_batch_places_patches(tok):
    env = ImageEnv()
    obs, _ = env.reset(seed=0)
    seq = tok.tokenize_observation(env.observation_space, obs)
    batch = make_batch([seq, seq])
    T = len(seq)
    n_img = int((seq.kind == Kind.IMAGE).sum())
    assert batch.patches.shape == (2 * n_img, 3, 16, 16)
    assert batch.patch_index.tolist()[n_img] == T + int(np.flatnonzero(seq.kind == Kind.IMAGE)[0])
    cut = tail(seq, T - 1)  # drops the first image token and its patch
    assert len(cut.patches) == n_img - 1


def test_generate_text_is_the_models_text(tok, monkeypatch):
    """Greedy, each new token is the text token (or end-of-text) a plain forward over the
    prefix and the tokens so far ranks first; sampled, the seed decides."""
    model = tiny_model(tok, context_len=64)
    prefix = tok.tokenize_text("Question: what is a list?\nAnswer:")
    decoded = []
    real = tok.decode_text
    monkeypatch.setattr(tok, "decode_text", lambda ids: decoded.append(list(ids)) or real(ids))
    out = generate_text(model, tok, prefix, max_new_tokens=64 - len(prefix))
    assert isinstance(out, str) and out == real(decoded[0]) and len(decoded[0]) > 10
    seq = prefix
    allowed = list(range(tok.config.text_vocab_size)) + [tok.eos_id]
    for t in decoded[0] + [tok.eos_id] * (len(decoded[0]) < 64 - len(prefix)):
        with torch.no_grad():
            logits = model.eval()(make_batch([seq]))[0][0][-1]  # (V,) after the last token
        assert allowed[int(logits[allowed].argmax())] == t
        seq = TokenSeq.concat([seq, text_seq(np.array([t]))])
    sampled = [generate_text(model, tok, prefix, 80, temperature=1.0, seed=s) for s in (3, 3, 4)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_generated_texts_in_batches_are_each_prefixs_own(tok):
    """Prefixes of one length are continued as one batch (images of two sizes: two groups, in
    batches of 2); each gets the text it gets alone, stopping at its own end-of-text."""
    model = tiny_model(tok, large=False)
    with torch.no_grad():  # end-of-text likely enough that some rows stop early, others not
        model.lm_head.weight[tok.eos_id] *= 4
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (32, 32, 48, 32, 48, 32)]
    prefixes = [tok.tokenize_observation(spaces.Box(0, 255, im.shape, np.uint8), im, path="image")
                for im in images]  # fmt: skip
    alone = [generate_text(model, tok, p, max_new_tokens=20) for p in prefixes]
    assert generate_texts(model, tok, prefixes, 20, batch_size=2) == alone
    assert "" in alone and len(set(alone)) > 3  # a row that stops at once, beside ones that run


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("chunk", [None, 4])
def test_envs_of_several_spaces_act_as_one_lane(tok, chunk, device):
    """Envs of four spaces (a discrete action; three continuous tokens beside an image; BabyAI's
    text; one continuous token) in one policy: each samples the tokens a policy of its own space
    samples (greedy, to rounding), its window sliding, envs finishing, in as many forwards a step
    as the longest action takes instead of one per token per space. (chunk 4: forwards of a few
    rows at a time, some of them rows of pads only.)"""

    def image_env():  # an action of 3 tokens: the others feed pads to its third's forward
        env = ImageEnv()
        env.action_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        return env

    makers, per, steps = [ENVS["discrete"], image_env, babyai_env, ENVS["continuous"]], 2, 24
    envs = [make() for make in makers for _ in range(per)]
    groups = [list(range(g * per, (g + 1) * per)) for g in range(len(makers))]
    obs_spaces = [envs[g[0]].observation_space for g in groups]
    act_spaces = [envs[g[0]].action_space for g in groups]
    model = tiny_model(tok, context_len=64).to(device)  # a few steps a window: they slide
    mixed = GatoPolicy(model, tok, obs_spaces, act_spaces, len(envs), groups=groups,
                       chunk_tokens=chunk)  # fmt: skip
    alone = [GatoPolicy(model, tok, o, a, per) for o, a in zip(obs_spaces, act_spaces, strict=True)]
    calls = {"mixed": 0, "alone": 0}
    for name, policies in (("mixed", [mixed]), ("alone", alone)):
        for p in policies:
            forward = type(p.net).next_logits.__get__(p.net)

            def counted(*args, name=name, forward=forward):
                calls[name] += 1
                return forward(*args)

            p.net.next_logits = counted
    obs = [env.reset(seed=i)[0] for i, env in enumerate(envs)]
    active = np.ones(len(envs), bool)
    for _ in range(steps):
        batches = [
            stack_values(o, [obs[e] for e in g]) for o, g in zip(obs_spaces, groups, strict=True)
        ]
        actions = mixed.act(batches, active)
        for g, (p, batch, a_space) in enumerate(zip(alone, batches, act_spaces, strict=True)):
            want = p.act(batch, active[groups[g]])
            got_ids = mixed.last_action_ids[groups[g], : p.last_action_ids.shape[1]]
            live = active[groups[g]]
            np.testing.assert_array_equal(got_ids[live], p.last_action_ids[live])
            np.testing.assert_array_equal(np.asarray(actions[g])[live], np.asarray(want)[live])
            for i, e in enumerate(groups[g]):
                if active[e]:
                    obs[e], _, term, trunc, _ = envs[e].step(index_value(a_space, actions[g], i))
                    active[e] = not (term or trunc)
    assert not active.all() and active.any()  # some episodes ended on the way, not all
    if chunk is None:
        assert calls["mixed"] * 2 < calls["alone"], calls


def test_envs_of_several_spaces_sample_inside_their_own_spaces(tok):
    """Sampled (temperature) with envs of several spaces in one lane, each env's action lies in
    its own space, and a policy refuses groups it cannot act for."""
    makers = [ENVS["discrete"], ENVS["continuous"], babyai_env]
    envs = [make() for make in makers for _ in range(2)]
    groups = [[0, 1], [2, 3], [4, 5]]
    o_spaces = [envs[g[0]].observation_space for g in groups]
    a_spaces = [envs[g[0]].action_space for g in groups]
    model = tiny_model(tok, context_len=128)
    policy = GatoPolicy(model, tok, o_spaces, a_spaces, 6, "temperature", seed=3, groups=groups)
    obs = [env.reset(seed=i)[0] for i, env in enumerate(envs)]
    for _ in range(5):
        actions = policy.act([stack_values(o, [obs[e] for e in g])
                              for o, g in zip(o_spaces, groups, strict=True)])  # fmt: skip
        for g, (a_space, batch) in enumerate(zip(a_spaces, actions, strict=True)):
            for i, e in enumerate(groups[g]):
                a = index_value(a_space, batch, i)
                assert a_space.contains(a), (a, a_space)
                obs[e] = envs[e].step(a)[0]
    with pytest.raises(ValueError, match="split the envs"):
        GatoPolicy(model, tok, o_spaces, a_spaces, 6, groups=[[0, 1], [2, 3], [4]])
    with pytest.raises(ValueError, match="ragged cache"):
        GatoPolicy(model, tok, o_spaces, a_spaces, 6, groups=groups, use_cache=False)
