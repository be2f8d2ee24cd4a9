"""Token shards, windows, prompts, the mixture and batches (opengato/batches/)."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from opengato.batches.batch import LossWeights, make_batch, target_weights
from opengato.batches.mixture import Mixture, parse_weights, resolve_weights
from opengato.batches.shards import Shard, ensure_shard
from opengato.batches.sources import tokenize_qa
from opengato.batches.windows import Split, WindowSampler
from opengato.kinds import Kind
from opengato.tokens.codecs import normalize_patches
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

L = 64


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def cartpole_episodes(n: int, max_steps: int = 40, seed: int = 0):
    """(observations (T, 4), actions (T,)) of CartPole under a linear expert rule; lengths vary."""
    env = gym.make("CartPole-v1")
    out = []
    for i in range(n):
        o, _ = env.reset(seed=seed + i)
        obs, acts = [], []
        for _ in range(max_steps - 3 * i):
            a = int(o[2] + 0.5 * o[3] > 0)
            obs.append(o)
            acts.append(a)
            o, _, term, trunc, _ = env.step(a)
            if term or trunc:
                break
        out.append((np.array(obs), np.array(acts)))
    return env.observation_space, env.action_space, out


def make_shard(tmp_path, tok, name="classic/CartPole-v1", n=8, source_kind="control", seed=0):
    obs_space, act_space, eps = cartpole_episodes(n, seed=seed)
    seqs = [tok.tokenize_episode(obs_space, act_space, o, a) for o, a in eps]
    shard, _ = ensure_shard(
        tmp_path / name.replace("/", "__"),
        name=name,
        domain=name.split("/")[0],
        source_kind=source_kind,
        tokenizer_config=tok.config,
        source_version="v1",
        produce=lambda: (seqs, None),
    )
    return shard


def image_shard(tmp_path, tok, n=4, T=6):
    """A Dict space with a (16, 32, 3) image and a float vector; actions Box(2)."""
    obs_space = spaces.Dict(
        image=spaces.Box(0, 255, (16, 32, 3), np.uint8), state=spaces.Box(-1, 1, (3,), np.float32)
    )
    act_space = spaces.Box(-1, 1, (2,), np.float32)
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(n):
        obs = {
            "image": rng.integers(0, 256, (T, 16, 32, 3), dtype=np.uint8),
            "state": rng.uniform(-1, 1, (T, 3)).astype(np.float32),
        }
        act = rng.uniform(-1, 1, (T, 2)).astype(np.float32)
        seqs.append(tok.tokenize_episode(obs_space, act_space, obs, act))
    shard, _ = ensure_shard(tmp_path / "img", name="toy/Image", domain="toy", source_kind="control",
                            tokenizer_config=tok.config, source_version="v1",
                            produce=lambda: (seqs, None))  # fmt: skip
    return shard


def episode_of(shard: Shard, offset: int) -> int:
    return int(np.searchsorted(shard.episode_starts, offset, side="right") - 1)


def test_windows_aligned_to_timestep_starts_within_one_episode(tmp_path, tok):
    shard = make_shard(tmp_path, tok)
    sampler = WindowSampler(shard, L, Split("all"), prompt_fraction=0.0, pad_id=tok.pad_id)
    rng = np.random.default_rng(0)
    starts = set(shard.timestep_starts.tolist())
    padded = 0
    for _ in range(300):
        w = sampler.sample(rng)
        assert w.start in starts and len(w.ids) == L
        assert w.obs_pos[0] == 0  # a window opens with an observation
        e = episode_of(shard, w.start)
        n = int((w.kind != Kind.PAD).sum())
        end = int(shard.episode_starts[e + 1])
        assert n == min(L, end - w.start)  # never runs into the next episode
        np.testing.assert_array_equal(w.ids[:n], shard.ids[w.start : w.start + n])
        np.testing.assert_array_equal(w.target_mask[:n], shard.target_mask[w.start : w.start + n])
        assert (w.ids[n:] == tok.pad_id).all() and not w.target_mask[n:].any()
        padded += n < L
    assert padded > 0  # episode ends were reached and padded


def test_prompts_from_another_episode_and_not_in_loss(tmp_path, tok):
    shard = make_shard(tmp_path, tok)
    sampler = WindowSampler(shard, L, Split("all"), prompt_fraction=1.0, prompt_end_fraction=0.5,
                            prompt_len=24, pad_id=tok.pad_id)  # fmt: skip
    rng = np.random.default_rng(1)
    starts = set(shard.timestep_starts.tolist())
    ends = 0
    for _ in range(300):
        w = sampler.sample(rng)
        assert 0 < w.prompt_len <= 24
        assert not w.target_mask[: w.prompt_len].any()
        assert w.prompt_start in starts and w.start in starts
        pe, e = episode_of(shard, w.prompt_start), episode_of(shard, w.start)
        assert pe != e
        assert episode_of(shard, w.prompt_start + w.prompt_len - 1) == pe
        np.testing.assert_array_equal(
            w.ids[: w.prompt_len], shard.ids[w.prompt_start : w.prompt_start + w.prompt_len]
        )
        # the sequence proper follows the prompt, with its own loss mask
        n = int((w.kind != Kind.PAD).sum()) - w.prompt_len
        np.testing.assert_array_equal(
            w.target_mask[w.prompt_len : w.prompt_len + n], shard.target_mask[w.start : w.start + n]
        )
        assert w.obs_pos[w.prompt_len] == 0
        ends += w.prompt_start + w.prompt_len == shard.episode_starts[pe + 1]
    assert 100 < ends < 250  # about half the prompts are episode ends (the rest mostly not)


def test_prompt_fraction_and_no_prompts_for_text(tmp_path, tok):
    shard = make_shard(tmp_path, tok)
    sampler = WindowSampler(shard, L, prompt_fraction=0.25, pad_id=tok.pad_id)
    rng = np.random.default_rng(2)
    frac = np.mean([sampler.sample(rng).prompt_len > 0 for _ in range(2000)])
    assert 0.2 < frac < 0.3
    text = make_shard(tmp_path, tok, name="text/python-docs", source_kind="text")
    assert WindowSampler(text, L, prompt_fraction=1.0).prompt_fraction == 0.0
    # a prompt that leaves the sequence no room is refused, naming the option
    WindowSampler(shard, L, prompt_len=L - 1)
    for bad in (L, L + 10, -1):
        with pytest.raises(ValueError, match=f"--prompt-len {bad} leaves no room"):
            WindowSampler(shard, L, prompt_len=bad)
    WindowSampler(shard, L, prompt_len=L, prompt_fraction=0.0)  # no prompts: no limit


def test_split_holds_out_last_episodes(tmp_path, tok):
    shard = make_shard(tmp_path, tok, n=10)
    assert Split("train", 0.2).episode_range(shard) == (0, 8)
    assert Split("val", 0.2).episode_range(shard) == (8, 10)
    sampler = WindowSampler(shard, L, Split("val", 0.2), pad_id=tok.pad_id)
    rng = np.random.default_rng(0)
    assert all(episode_of(shard, sampler.sample(rng).start) >= 8 for _ in range(100))


def test_image_windows_carry_their_patches(tmp_path, tok):
    shard = image_shard(tmp_path, tok)
    assert len(shard.patches) == 4 * 6 * 2  # two 16x16 patches per (16, 32) image
    sampler = WindowSampler(shard, 20, Split("all"), prompt_fraction=1.0, prompt_len=10,
                            pad_id=tok.pad_id)  # fmt: skip
    rng = np.random.default_rng(0)
    windows = [sampler.sample(rng) for _ in range(16)]
    for w in windows:
        assert len(w.patches) == len(w.patch_pos) == np.count_nonzero(w.kind == Kind.IMAGE)
        t = int(np.searchsorted(shard.timestep_starts, w.start))
        p0 = int(shard.patch_starts[t])
        n_main = int((w.kind[w.prompt_len :] == Kind.IMAGE).sum())
        np.testing.assert_array_equal(w.patches[len(w.patches) - n_main :],
                                      shard.patches[p0 : p0 + n_main])  # fmt: skip
    batch = make_batch(windows, target_weights(windows, LossWeights()))
    B, T = batch.ids.shape
    assert (B, T) == (16, 20)
    assert batch.patches.shape == (len(batch.patch_index), 3, 16, 16)
    assert (batch.kind.reshape(-1)[batch.patch_index] == Kind.IMAGE).all()
    assert int((batch.kind == Kind.IMAGE).sum()) == len(batch.patch_index)
    expected = normalize_patches(np.concatenate([w.patches for w in windows]))
    torch.testing.assert_close(batch.patches, torch.from_numpy(expected))
    assert batch.ids.dtype == torch.long and batch.target_weight.dtype == torch.float32
    assert batch.patch_pos.shape == (len(batch.patch_index), 4)
    torch.testing.assert_close(batch.patch_pos, torch.from_numpy(
        np.concatenate([w.patch_pos for w in windows]).astype(np.int64)))  # fmt: skip


def test_one_make_batch_for_windows_and_token_streams(tmp_path, tok):
    """Windows and TokenSeqs of the same tokens stack into the same batch (the policy's
    streams carry no target weights)."""
    from opengato.tokens.seq import TokenSeq

    shard = image_shard(tmp_path, tok)
    sampler = WindowSampler(shard, 20, Split("all"), prompt_fraction=0.0, pad_id=tok.pad_id)
    windows = [sampler.sample(np.random.default_rng(i)) for i in range(3)]
    seqs = [TokenSeq(w.ids, w.kind, w.obs_pos, w.target_mask, np.zeros(0, np.int64), w.patches,
                     w.patch_pos) for w in windows]  # fmt: skip
    a, b = make_batch(windows), make_batch(seqs)
    assert a.target_weight is None and b.target_weight is None
    for f in ("ids", "kind", "obs_pos", "patches", "patch_index", "patch_pos"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    with pytest.raises(ValueError, match="equal lengths"):
        make_batch([seqs[0], TokenSeq.concat([seqs[1], seqs[2]])])


def test_mixture_follows_weights(tmp_path, tok):
    shards = [make_shard(tmp_path, tok, name=n, seed=i)
              for i, n in enumerate(["classic/A", "classic/B", "babyai/C"])]  # fmt: skip
    mix = Mixture(shards, L, weights="classic/A=1,classic/B=3,babyai=4", pad_id=tok.pad_id)
    np.testing.assert_allclose(mix.probs, [1 / 8, 3 / 8, 4 / 8])
    rng = np.random.default_rng(0)
    counts = {}
    for w in mix.sample_windows(rng, 4000):
        counts[w.source] = counts.get(w.source, 0) + 1
    assert abs(counts["classic/A"] / 4000 - 1 / 8) < 0.02
    assert abs(counts["classic/B"] / 4000 - 3 / 8) < 0.03
    assert abs(counts["babyai/C"] / 4000 - 4 / 8) < 0.03
    # a domain weight is split among its datasets; defaults give each control suite 1
    np.testing.assert_allclose(resolve_weights(shards, "classic=2"), [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(resolve_weights(shards), [1 / 4, 1 / 4, 1 / 2])
    # a dataset's own name wins over a glob that also matches it, wherever it is listed
    np.testing.assert_allclose(resolve_weights(shards, "classic/*=1,classic/B=2,babyai=1"),
                               [1 / 4, 2 / 4, 1 / 4])  # fmt: skip
    with pytest.raises(ValueError, match="match no dataset"):
        resolve_weights(shards, "atari=1")
    assert parse_weights("classic=1, text=0.5") == {"classic": 1.0, "text": 0.5}


def test_loss_shares_count_targets_not_windows(tmp_path, tok):
    """Half the windows from a control task (an action token in ~6) and half from text (every
    token a target): text takes most of the loss; weighting observations back in moves it."""
    control = make_shard(tmp_path, tok)
    docs = [tok.tokenize_text("the fox jumps over a dog. " * 30) for _ in range(4)]
    text, _ = ensure_shard(tmp_path / "text", name="text/x", domain="text", source_kind="text",
                           tokenizer_config=tok.config, source_version="v1",
                           produce=lambda: (docs, None))  # fmt: skip
    mix = Mixture([control, text], L, "classic=1,text=1", pad_id=tok.pad_id, pack=True)
    np.testing.assert_allclose(mix.probs, [0.5, 0.5])
    shares = mix.loss_shares()
    assert shares.sum() == pytest.approx(1.0) and shares[1] > 0.75
    rng = np.random.default_rng(3)
    windows = mix.sample_windows(rng, 400)
    weights = target_weights(windows, LossWeights()).sum(1)
    is_text = np.array([w.source == "text/x" for w in windows])
    assert abs(weights[is_text].sum() / weights.sum() - shares[1]) < 0.05  # what batches see
    with_obs = Mixture([control, text], L, "classic=1,text=1", pad_id=tok.pad_id, pack=True,
                       loss_weights=LossWeights(observation=1.0))  # fmt: skip
    assert with_obs.loss_shares()[0] > shares[0] * 2
    # per window: every window's targets weigh 1 in all, so the loss shares are the windows'
    per_window = target_weights(windows, LossWeights(per_window=True))
    counted = make_batch(windows, per_window).target_mask().numpy()  # what the loss counts
    np.testing.assert_allclose((per_window * counted).sum(1), 1.0, rtol=1e-5)
    even = Mixture([control, text], L, "classic=1,text=1", pad_id=tok.pad_id, pack=True,
                   loss_weights=LossWeights(per_window=True))  # fmt: skip
    np.testing.assert_allclose(even.loss_shares(), [0.5, 0.5], rtol=1e-5)


def test_same_seed_same_windows(tmp_path, tok):
    mix = Mixture([make_shard(tmp_path, tok)], L, pad_id=tok.pad_id)
    a = mix.sample_windows(np.random.default_rng([0, 1, 5]), 8)
    b = mix.sample_windows(np.random.default_rng([0, 1, 5]), 8)
    c = mix.sample_windows(np.random.default_rng([0, 0, 5]), 8)  # another rank
    assert all((x.ids == y.ids).all() for x, y in zip(a, b, strict=True))
    assert any((x.ids != y.ids).any() for x, y in zip(a, c, strict=True))


def test_shards_reused_and_rebuilt(tmp_path, tok):
    obs_space, act_space, eps = cartpole_episodes(3)
    calls = []

    def produce_with(t: Tokenizer):
        def produce():
            calls.append(1)
            return [t.tokenize_episode(obs_space, act_space, o, a) for o, a in eps], None

        return produce

    def ensure(t: Tokenizer, version: str):
        return ensure_shard(tmp_path / "s", name="classic/CartPole-v1", domain="classic",
                            source_kind="control", tokenizer_config=t.config, source_version=version,
                            produce=produce_with(t))  # fmt: skip

    s1, rebuilt = ensure(tok, "v1")
    assert rebuilt and len(calls) == 1
    _, rebuilt = ensure(tok, "v1")
    assert not rebuilt and len(calls) == 1
    _, rebuilt = ensure(tok, "v2")  # the source changed
    assert rebuilt and len(calls) == 2
    tok2 = Tokenizer(dataclasses.replace(tok.config, num_bins=512))  # the tokenizer changed
    s2, rebuilt = ensure(tok2, "v2")
    assert rebuilt and len(calls) == 3
    assert s2.meta["tokenizer"] != s1.meta["tokenizer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp folders left
    assert isinstance(s2.ids, np.ndarray) and s2.ids.dtype == np.int32


def test_empty_dataset_is_an_error(tmp_path, tok):
    with pytest.raises(ValueError, match="no non-empty episodes"):
        ensure_shard(tmp_path / "e", name="classic/X", domain="classic", source_kind="control",
                     tokenizer_config=TokenizerConfig(), source_version="v",
                     produce=lambda: ([], None))  # fmt: skip


def test_qa_question_not_in_loss(tok):
    seq = tokenize_qa(tok, "What is 2+2?", "4")
    q = len(tok.encode_text("Question: What is 2+2?\nAnswer:"))
    assert not seq.target_mask[:q].any() and seq.target_mask[q:].all()
    assert seq.ids[-1] == tok.eos_id
    assert tok.decode_text(seq.ids) == "Question: What is 2+2?\nAnswer: 4"


def test_loss_weights_default_to_the_papers_mask(tmp_path, tok):
    """Observation text (a mission) is never a target by default; LossWeights can weight
    observations in, but never inside a prompt, and never separators or padding."""
    obs_space = spaces.Dict(
        {
            "mission": spaces.Text(40, charset=" abcdefghijklmnopqrstuvwxyz"),
            "x": spaces.Box(-1.0, 1.0, (2,), np.float32),
        }
    )
    act_space = spaces.Discrete(3)
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(6):
        T = 12
        obs = {"mission": ["go to the red ball"] * T,
               "x": rng.uniform(-1, 1, (T, 2)).astype(np.float32)}  # fmt: skip
        seqs.append(tok.tokenize_episode(obs_space, act_space, obs, rng.integers(0, 3, T)))
    shard, _ = ensure_shard(
        tmp_path / "m", name="babyai/M", domain="babyai", source_kind="control",
        tokenizer_config=tok.config, source_version="1", produce=lambda: (seqs, None),
    )  # fmt: skip
    sampler = WindowSampler(shard, L, Split("all"), prompt_fraction=1.0, prompt_len=20,
                            pad_id=tok.pad_id)  # fmt: skip
    windows = [sampler.sample(np.random.default_rng(i)) for i in range(8)]
    assert any(w.prompt_len for w in windows)
    paper = torch.from_numpy(target_weights(windows, LossWeights()))
    obs = torch.from_numpy(np.stack([w.obs_pos for w in windows])) >= 0
    kind = torch.from_numpy(np.stack([w.kind for w in windows]).astype(np.int64))
    action = (~obs) & (kind == Kind.DISCRETE)
    assert not paper[obs].any() and not paper[kind == Kind.TEXT].any()
    assert paper[action].sum() > 0 and set(paper[paper > 0].tolist()) == {1.0}
    heavy = torch.from_numpy(target_weights(windows, LossWeights(action=2.0, observation=0.5)))
    for b, w in enumerate(windows):
        body = torch.arange(L) >= w.prompt_len
        assert (heavy[b][obs[b] & body] == 0.5).all() and not heavy[b][obs[b] & ~body].any()
        assert (heavy[b][action[b] & body] == 2.0).all()
        assert (
            not heavy[b][kind[b] == Kind.SEPARATOR].any()
            and not heavy[b][kind[b] == Kind.PAD].any()
        )
    with pytest.raises(ValueError, match="observation"):
        LossWeights(observation=-1.0)


def test_packing_fills_windows_with_episode_starts(tmp_path, tok):
    """With packing, a window whose episode ends early continues with the start of another
    episode of the same split (its tokens and loss as in the shard), never with padding."""
    shard = make_shard(tmp_path, tok, n=8)
    plain = WindowSampler(shard, L, Split("train"), prompt_fraction=0.5, pad_id=tok.pad_id)
    packed = WindowSampler(shard, L, Split("train"), prompt_fraction=0.5, pad_id=tok.pad_id,
                           pack=True)  # fmt: skip
    rng = np.random.default_rng(0)
    padded = [plain.sample(rng) for _ in range(64)]
    assert np.mean([(w.kind == Kind.PAD).mean() for w in padded]) > 0.05  # there was padding
    es = shard.episode_starts
    train_starts = set(es[: Split("train").episode_range(shard)[1]].tolist())
    n_packed = 0
    for _ in range(64):
        w = packed.sample(rng)
        assert not (w.kind == Kind.PAD).any()
        if w.packed_at < 0:
            continue
        n_packed += 1
        end = int(es[np.searchsorted(es, w.start, side="right")])  # the sequence's episode end
        assert w.packed_at == w.prompt_len + end - w.start
        rest = w.ids[w.packed_at :]
        # the packed tokens are the start of a training episode, loss mask included
        a = next(a for a in train_starts
                 if np.array_equal(shard.ids[a : a + min(len(rest), 6)], rest[:6]))  # fmt: skip
        n = min(len(rest), int(es[np.searchsorted(es, a, side="right")]) - a)
        np.testing.assert_array_equal(rest[:n], shard.ids[a : a + n])
        np.testing.assert_array_equal(
            w.target_mask[w.packed_at : w.packed_at + n], shard.target_mask[a : a + n]
        )
    assert n_packed > 10


def test_text_windows_start_at_any_token_and_qa_windows_at_a_question(tmp_path, tok):
    """Text windows start anywhere in a document (so a long document's tail is trained on),
    run on through the following documents as the shard holds them and never start in the
    validation documents; question/answer windows start where a question does."""
    docs = [tok.tokenize_text(f"Document {k} says: " + "the fox jumps over a dog. " * 40 * k)
            for k in (1, 5, 2, 9, 3)]  # fmt: skip
    text, _ = ensure_shard(tmp_path / "text", name="text/x", domain="text", source_kind="text",
                           tokenizer_config=tok.config, source_version="v1",
                           produce=lambda: (docs, 1))  # fmt: skip
    es = text.episode_starts
    sampler = WindowSampler(text, L, Split("train"), pad_id=tok.pad_id, pack=True)
    rng = np.random.default_rng(0)
    windows = [sampler.sample(rng) for _ in range(300)]
    starts = np.array([w.start for w in windows])
    assert (starts >= 0).all() and (starts < es[4]).all()  # the training documents only
    assert np.isin(starts, es).mean() < 0.1  # mostly inside documents
    for w in windows[:50]:
        n = min(L, int(es[4]) - w.start)  # the sequence proper runs to the split's end
        np.testing.assert_array_equal(w.ids[:n], text.ids[w.start : w.start + n])
        assert not (w.kind == Kind.PAD).any()
    # the tail of the longest document (more than a window from its start) is reached
    longest = int(np.argmax(np.diff(es)))
    assert es[longest + 1] - es[longest] > 3 * L
    assert (starts > es[longest] + 2 * L).sum() and (starts < es[longest + 1]).sum()
    qa = ensure_shard(tmp_path / "qa", name="text/qa", domain="text", source_kind="qa",
                      tokenizer_config=tok.config, source_version="v1",
                      produce=lambda: ([tokenize_qa(tok, f"What is {k}?", f"It is {k}.")
                                        for k in range(20)], 2))[0]  # fmt: skip
    sampler = WindowSampler(qa, L, Split("train"), pad_id=tok.pad_id, pack=True)
    assert all(sampler.sample(rng).start in qa.episode_starts for _ in range(100))


def test_shards_record_the_text_models_hash(tmp_path, tok):
    """A shard names the text model its tokens came from, as a checkpoint does."""
    import hashlib

    from opengato.tokens.text import text_model_file

    shard = make_shard(tmp_path, tok)
    path = text_model_file(tok.config.text_model, tok.config.text_vocab_size)
    assert shard.meta["text_model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
