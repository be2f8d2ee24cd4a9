"""Model behaviour: shapes, parameter counts, causality, the loss and its targets, KV cache, patch
positions."""

import dataclasses

import numpy as np
import pytest
import torch

from opengato.kinds import Kind
from opengato.model.gato import Gato
from opengato.model.inputs import GatoBatch
from opengato.model.presets import PRESETS, make_config

V = 300  # small vocabulary for the tiny models


def tiny(**overrides) -> Gato:
    torch.manual_seed(0)
    cfg = make_config("gato-tiny", V, context_len=64, max_obs_pos=32, **overrides)
    return Gato(cfg).eval()


def make_batch(B: int = 2, T: int = 24, seed: int = 0, targets: bool = True) -> GatoBatch:
    """Timesteps of [4 image patches, 2 continuous obs, separator, 2 actions] (9 tokens each);
    the actions are the targets (`targets=False`: none, as at inference)."""
    g = torch.Generator().manual_seed(seed)
    step = [Kind.IMAGE] * 4 + [Kind.CONTINUOUS] * 2 + [Kind.SEPARATOR] + [Kind.CONTINUOUS] * 2
    kind = torch.tensor((step * (T // len(step) + 1))[:T]).repeat(B, 1)
    t_in_step = torch.arange(T) % len(step)
    obs_pos = torch.where(t_in_step < 6, t_in_step, -1).repeat(B, 1)
    weight = (t_in_step >= 7).repeat(B, 1).float() if targets else None
    ids = torch.randint(0, V, (B, T), generator=g)
    patch_index = (kind.flatten() == Kind.IMAGE).nonzero().squeeze(1)
    n = len(patch_index)
    k = t_in_step.repeat(B)[patch_index]  # patch number inside its image (2x2 grid)
    row, col = (k // 2) * 64, (k % 2) * 64
    patch_pos = torch.stack([row, row + 64, col, col + 64], dim=1)
    patches = torch.randn(n, 3, 16, 16, generator=g) / 4
    return GatoBatch(ids, kind, obs_pos, weight, patches, patch_index, patch_pos)


def slice_batch(b: GatoBatch, t0: int, t1: int) -> GatoBatch:
    """Tokens [t0, t1) of every row, with their patches re-indexed."""
    B, T = b.ids.shape
    t = b.patch_index % T
    keep = (t >= t0) & (t < t1)
    index = (b.patch_index[keep] // T) * (t1 - t0) + t[keep] - t0
    cut = lambda x: None if x is None else x[:, t0:t1]  # noqa: E731
    return GatoBatch(
        cut(b.ids), cut(b.kind), cut(b.obs_pos), cut(b.target_weight),
        b.patches[keep], index, b.patch_pos[keep],
    )  # fmt: skip


def test_shapes_every_preset_at_tiny_scale():
    for name, kw in PRESETS.items():
        cfg = make_config(name, V, n_layer=1, n_embd=8 * kw["n_head"], d_ff=32, patch_channels=8)
        for ffn in ("gelu", "geglu"):
            model = Gato(dataclasses.replace(cfg, ffn=ffn)).eval()
            logits, loss = model(make_batch())
            assert logits.shape == (int(make_batch().target_mask().sum()), V)
            assert loss.ndim == 0 and torch.isfinite(loss)
            logits, loss = model(make_batch(targets=False))
            assert logits.shape == (2, 24, V) and loss is None
            assert name in model.describe()


@pytest.mark.parametrize(
    "name,ffn,core,non_emb",
    [
        ("gato-79m", "gelu", 82.0e6, 56.6e6),
        ("gato-364m", "gelu", 390.5e6, 339.7e6),
        ("gato-1.18b", "gelu", 1.276e9, 1.208e9),
        ("gato-79m", "geglu", 100.9e6, None),
        ("gato-364m", "geglu", 503.7e6, None),
        ("gato-1.18b", "geglu", 1.678e9, None),
    ],
)
def test_paper_shapes_match_the_spec_counts(name, ffn, core, non_emb):
    with torch.device("meta"):
        model = Gato(make_config(name, 33_024, ffn=ffn))
    c = model.cfg
    head = c.n_embd // c.n_head
    shape = {k: PRESETS[name][k] for k in ("n_layer", "n_embd", "n_head", "d_ff")}
    assert shape == {k: getattr(c, k) for k in shape}
    assert head == {"gato-79m": 32, "gato-364m": 128, "gato-1.18b": 128}[name]
    # Transformer + tied token table (what the spec counts): within 1%.
    extras = model.patch_embed, model.obs_pos_emb
    n_core = model.num_params() - sum(p.numel() for m in extras for p in m.parameters())
    assert abs(n_core / core - 1) < 0.01
    assert abs(model.num_params() / core - 1) < 0.05  # with the image and position tables
    if non_emb is not None:
        n = n_core - model.wte.weight.numel()
        assert abs(n / non_emb - 1) < 0.01
        assert model.num_params(non_embedding=True) < model.num_params()


def test_unknown_preset_and_field_errors():
    with pytest.raises(ValueError, match="gato-79m"):
        make_config("gato-7b", V)
    with pytest.raises(ValueError, match="n_layers"):
        make_config("gato-tiny", V, n_layers=3)


def test_causality_tokens_and_patches():
    model, b = tiny(), make_batch(targets=False)
    logits, _ = model(b)
    t = 13
    b2 = dataclasses.replace(b, ids=b.ids.clone())
    b2.ids[:, t] = (b2.ids[:, t] + 1) % V
    assert torch.equal(model(b2)[0][:, :t], logits[:, :t])
    assert not torch.allclose(model(b2)[0][:, t:], logits[:, t:])
    # Change the patches of a later image (tokens 18-21 of each row).
    later = (b.patch_index % 24) >= 18
    b3 = dataclasses.replace(b, patches=b.patches.clone())
    b3.patches[later] += 1.0
    out = model(b3)[0]
    assert torch.equal(out[:, :18], logits[:, :18])
    assert not torch.allclose(out[:, 18:], logits[:, 18:])


def test_loss_counts_exactly_the_targets():
    model, b = tiny(), make_batch(T=23)  # the last token (22) is an observation
    mask = b.target_mask()  # (B, T)
    logits, loss = model(b)
    assert logits.shape == (int(mask.sum()), V)  # only where a target is predicted
    full, _ = model(dataclasses.replace(b, target_weight=None))  # (B, T, V)
    torch.testing.assert_close(logits, full[:, :-1][mask[:, 1:]], atol=1e-5, rtol=1e-5)
    want = torch.nn.functional.cross_entropy(full[:, :-1][mask[:, 1:]], b.ids[mask])
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-5)
    _, per_tok = model(b, reduction="none")  # (B, T)
    assert per_tok.shape == b.ids.shape and torch.equal(per_tok != 0, mask)
    assert torch.allclose(per_tok.sum() / mask.sum(), loss, atol=1e-6)
    # The loss reaches exactly the hidden states whose next token is a counted target.
    h = model.hidden(b).detach().requires_grad_()
    model.lm_head(h[:, :-1][mask[:, 1:]]).logsumexp(-1).sum().backward()
    reached = h.grad.abs().amax(-1) > 0  # (B, T)
    assert torch.equal(reached[:, :-1], mask[:, 1:]) and not reached[:, -1].any()
    assert not mask[:, 0].any()  # nothing predicts the first token
    # Changing an observation target changes nothing.
    assert not b.target_weight[:, 22].any()
    changed = dataclasses.replace(b, ids=b.ids.clone())
    changed.ids[:, 22] = (changed.ids[:, 22] + 7) % V
    assert torch.equal(model(changed)[1], loss)
    # Padding never counts, even where `target_weight` says it does.
    pad = dataclasses.replace(
        b, target_weight=torch.ones_like(b.target_weight), kind=b.kind.clone()
    )
    pad.kind[:, 22] = Kind.PAD
    assert not pad.target_mask()[:, 22].any()
    assert torch.equal(model(pad)[1], model(dataclasses.replace(pad, ids=changed.ids))[1])
    assert model(dataclasses.replace(b, target_weight=None))[1] is None


def test_no_targets_is_a_zero_loss_with_gradients():
    model, b = tiny(), make_batch()
    _, loss = model(dataclasses.replace(b, target_weight=torch.zeros_like(b.target_weight)))
    assert loss.item() == 0.0
    loss.backward()
    assert model.wte.weight.grad is not None


def test_target_weights_weight_the_mean():
    model, b = tiny(), make_batch(T=23)
    mask = b.target_mask()
    _, per_tok = model(b, reduction="none")  # (B, T), unweighted
    w = b.target_weight.clone()
    w[0] *= 3.0  # the first row's targets count three times as much
    weighted = dataclasses.replace(b, target_weight=w)
    want = (per_tok * w)[mask].sum() / w[mask].sum()
    torch.testing.assert_close(model(weighted)[1], want)
    assert not torch.allclose(want, model(b)[1])


@pytest.mark.parametrize("pos_encoding", ["rope", "none"])
def test_kv_cache_matches_full_forward(pos_encoding):
    model, b = tiny(pos_encoding=pos_encoding), make_batch(T=27, targets=False)
    full, _ = model(b)
    cache = model.make_cache()
    chunks = [(0, 9), (9, 16), (16, 17), (17, 18), (18, 22), (22, 27)]  # prefill, steps, chunks
    for t0, t1 in chunks:
        logits, _ = model(slice_batch(b, t0, t1), cache=cache)
        torch.testing.assert_close(logits, full[:, t0:t1], atol=1e-5, rtol=1e-5)
    assert cache.length == cache.pos == 27
    fresh = model.make_cache()
    model.next_logits(slice_batch(b, 0, 20), fresh)
    torch.testing.assert_close(model.next_logits(slice_batch(b, 20, 21), fresh), full[:, 20])
    # Logits over a slice of the vocabulary (what acting uses) are that slice of the full ones,
    # with or without a cache; a cache's selected rows continue exactly as those rows.
    torch.testing.assert_close(
        model.next_logits(slice_batch(b, 0, 21), None, (3, 40)), full[:, 20, 3:40]
    )
    model.next_logits(slice_batch(b, 21, 25), fresh)
    rows = fresh.select([1])
    assert rows.length == fresh.length == 25 and rows.k[0].shape[0] == 1
    nxt = slice_batch(b, 25, 26)  # an action token: no image patches to re-index
    one = dataclasses.replace(nxt, ids=nxt.ids[1:], kind=nxt.kind[1:], obs_pos=nxt.obs_pos[1:])
    torch.testing.assert_close(model.next_logits(one, rows), full[1:, 25], atol=1e-5, rtol=1e-5)


def test_cache_crop_keeps_relative_positions():
    # With one layer the retained keys depend only on their own tokens, so after a crop the
    # cached model must equal a fresh forward over the retained window (positions from 0):
    # RoPE's relative distances are preserved. With more layers, retained keys were computed
    # while the dropped tokens were visible, so a crop is the usual sliding-window approximation.
    model, b = tiny(n_layer=1), make_batch(T=27, targets=False)
    cache = model.make_cache(capacity=20)
    model(slice_batch(b, 0, 18), cache=cache)
    cache.crop(keep_last=9)  # keep tokens 9..17
    assert (cache.length, cache.start) == (9, 9)
    window, _ = model(slice_batch(b, 9, 27))
    for t0, t1 in [(18, 20), (20, 21), (21, 27)]:
        logits, _ = model(slice_batch(b, t0, t1), cache=cache)
        torch.testing.assert_close(logits, window[:, t0 - 9 : t1 - 9], atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="crop"):
        model(slice_batch(b, 0, 5), cache=cache)


def _slide(model, b, cache, chunks, keep):
    """Feed chunks [t0, t1) through `cache`, cropping to the last `keep` tokens before any chunk
    that would overflow it (as GatoPolicy slides); the logits of every chunk."""
    out = []
    for t0, t1 in chunks:
        if cache.length + (t1 - t0) > keep:
            cache.crop(keep - (t1 - t0))
        out.append(model(slice_batch(b, t0, t1), cache=cache)[0])
    return out


@pytest.mark.parametrize("n_layer", [1, 2])
def test_ring_cache_wraps_like_a_plain_window(n_layer):
    # The ring buffer wraps around its end many times (capacity 11, 60 tokens, chunks of 1-7
    # tokens that straddle the end); every chunk must see exactly what it sees in a cache that
    # never wraps (capacity 200: the contiguous path, i.e. a plain cache) after the same crops.
    model, b = tiny(n_layer=n_layer), make_batch(T=60, targets=False)
    cuts = [0, 7, 8, 9, 14, 15, 21, 22, 23, 29, 30, 31, 36, 37, 44, 45, 46, 52, 53, 60]
    chunks = list(zip(cuts, cuts[1:], strict=False))
    ring_cache, plain_cache = model.make_cache(capacity=11), model.make_cache(capacity=200)
    ring = _slide(model, b, ring_cache, chunks, keep=11)
    plain = _slide(model, b, plain_cache, chunks, keep=11)
    assert ring_cache.pos == plain_cache.pos == 60 and ring_cache.length == plain_cache.length
    for r, p in zip(ring, plain, strict=True):
        torch.testing.assert_close(r, p, atol=1e-5, rtol=1e-5)
    # A crop of a wrapped ring (no chunk forced it) forgets the same keys as a plain crop.
    ring_cache.crop(3)
    plain_cache.crop(3)
    nxt = slice_batch(b, 7, 9)  # two more tokens (no image patches) at positions 60, 61
    torch.testing.assert_close(
        model(nxt, cache=ring_cache)[0], model(nxt, cache=plain_cache)[0], atol=1e-5, rtol=1e-5
    )


def test_patch_position_sampling_train_vs_eval():
    model = tiny()
    pos = torch.tensor([[0, 8, 64, 65], [10, 128, 0, 2]] * 500)
    model.patch_embed.eval()
    row, col = model.patch_embed.position_index(pos)
    assert row[:2].tolist() == [3, 68] and col[:2].tolist() == [64, 0]
    model.patch_embed.train()
    row, col = model.patch_embed.position_index(pos)
    assert set(row[0::2].tolist()) == set(range(0, 8))
    assert row[1::2].min() >= 10 and row[1::2].max() <= 127 and len(set(row[1::2].tolist())) > 50
    assert set(col[0::2].tolist()) == {64} and set(col[1::2].tolist()) == {0, 1}
    # Drawn from the generator given (the same seed, the same positions), torch's default
    # generator untouched; without one, from the default generator.
    before = torch.get_rng_state()
    a = model.patch_embed.position_index(pos, torch.Generator().manual_seed(5))
    b = model.patch_embed.position_index(pos, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(5)
    assert torch.equal(model.patch_embed.position_index(pos)[0], a[0])


def test_dropout_off_in_eval_is_deterministic():
    model, b = tiny(), make_batch(targets=False)
    assert torch.equal(model(b)[0], model(b)[0])
    model.train()
    assert not torch.equal(model(b)[0], model(b)[0])


def test_observation_position_out_of_table_raises():
    model, b = tiny(), make_batch()
    b.obs_pos[0, 0] = 32
    with pytest.raises(ValueError, match="max_obs_pos"):
        model(b)


def test_bf16_autocast_and_optimizer_groups():
    model, b = tiny(), make_batch()
    model.train()
    opt = model.configure_optimizers(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(model.wte.weight) not in decayed and id(model.blocks[0].ln_1.weight) not in decayed
    assert id(model.blocks[0].attn.qkv.weight) in decayed
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(b)
        cache = model.make_cache()
        step = model.next_logits(slice_batch(b, 0, 10), cache)
    assert logits.dtype == torch.bfloat16 and step.shape == (2, V) and torch.isfinite(loss)
    loss.backward()
    opt.step()


def test_kind_values_are_the_stored_ones():
    """Shards and tests/data/golden.json store these numbers beside every token: they may not
    move."""
    want = {"TEXT": 0, "DISCRETE": 1, "CONTINUOUS": 2, "IMAGE": 3, "SEPARATOR": 4, "PAD": 5}
    assert {k.name: int(k) for k in Kind} == want


def test_smooth_bin_init_orders_the_value_bins():
    bins = (100, 300)
    smooth = tiny(bin_ids=bins, bin_init="smooth", bin_init_scale=8.0).wte.weight.detach()
    normal = tiny(bin_ids=bins).wte.weight.detach()
    cos = torch.nn.functional.cosine_similarity

    def neighbour_cos(w):  # mean cosine between embeddings of adjacent bins
        return cos(w[bins[0] : bins[1] - 1], w[bins[0] + 1 : bins[1]], dim=-1).mean().item()

    def far_cos(w):  # bins 64 apart
        return cos(w[bins[0] : bins[1] - 64], w[bins[0] + 64 : bins[1]], dim=-1).abs().mean().item()

    assert neighbour_cos(smooth) > 0.9 and far_cos(smooth) < 0.3
    assert abs(neighbour_cos(normal)) < 0.2
    # Same scale as the default init, and the other tokens are initialised as before.
    assert smooth[bins[0] : bins[1]].std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.equal(smooth[: bins[0]], normal[: bins[0]])
    with pytest.raises(ValueError, match="bin_ids"):
        make_config("gato-tiny", V, bin_ids=(200, V + 1))
    with pytest.raises(ValueError, match="bin_init"):
        make_config("gato-tiny", V, bin_init="uniform")


def test_small_cached_attention_matches_sdpa():
    """The unfused path used for a few queries over a KV cache on CPU equals SDPA."""
    import torch.nn.functional as F

    from opengato.model.decoding import small_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 16, generator=g) for n in (5, 37, 37))
    visible = torch.arange(37) <= 32 + torch.arange(5)[:, None]  # 32 cached keys, 5 new tokens
    mask = torch.zeros(visible.shape).masked_fill_(~visible, float("-inf"))  # as Gato.forward
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(small_attention(q, k, v, mask), want)
    q1 = q[:, :, :1]
    want1 = F.scaled_dot_product_attention(q1, k, v)
    torch.testing.assert_close(small_attention(q1, k, v, None), want1)


def _padded(rows: list[GatoBatch]) -> tuple[GatoBatch, np.ndarray]:
    """One-row batches (no image patches) of different lengths as one batch, left-padded with
    PAD tokens; and each row's number of pads."""
    T = max(r.ids.shape[1] for r in rows)
    lead = np.array([T - r.ids.shape[1] for r in rows], np.int64)

    def cat(f: str, v: int) -> torch.Tensor:
        x = [getattr(r, f) for r in rows]
        return torch.cat([torch.cat([torch.full((1, int(n)), v, dtype=t.dtype), t], 1)
                          for t, n in zip(x, lead, strict=True)])  # fmt: skip

    none = torch.zeros(0, dtype=torch.long)
    batch = GatoBatch(cat("ids", 0), cat("kind", Kind.PAD), cat("obs_pos", -1), None,
                      torch.zeros(0, 3, 16, 16), none, none.view(0, 4))  # fmt: skip
    return batch, lead


@pytest.mark.parametrize(("n_layer", "turns_ragged"), [(1, 0), (2, 0), (2, 2), (2, 3)])
def test_ragged_cache_rows_act_as_caches_of_their_own(n_layer, turns_ragged):
    # Two streams fed in chunks of different lengths per row (one forward for both, the shorter
    # chunk left-padded), through a ragged ring cache that wraps and crops each row on its own:
    # every row's next-token logits equal those of a cache fed that row alone. The cache starts
    # ragged, or turns ragged after `turns_ragged` forwards of equal chunks (at 3, it has
    # wrapped around its end).
    model = tiny(n_layer=n_layer)
    streams = [make_batch(B=1, T=70, seed=s, targets=False) for s in (1, 2)]
    none = torch.zeros(0, dtype=torch.long)  # no image patches: rows may be cut anywhere
    streams = [dataclasses.replace(b, kind=torch.where(b.kind == Kind.IMAGE, Kind.CONTINUOUS,
               b.kind), patches=b.patches[:0], patch_index=none, patch_pos=none.view(0, 4))
               for b in streams]  # fmt: skip
    even = [[(0, 9), (0, 9)], [(9, 10), (9, 10)], [(10, 16), (10, 16)]][:turns_ragged]
    chunks = even + [[(16, 17), (16, 19)], [(17, 24), (19, 20)], [(24, 31), (20, 29)],
                     [(31, 32), (29, 30)], [(32, 40), (30, 31)], [(40, 41), (31, 40)]]  # fmt: skip
    if not turns_ragged:
        chunks = [[(0, 9), (0, 3)], [(9, 10), (3, 9)], [(10, 16), (9, 10)]] + chunks
    keep = 13
    ragged, alone = model.make_cache(capacity=keep), [model.make_cache(keep) for _ in streams]
    for i, step in enumerate(chunks):
        parts = [slice_batch(b, t0, t1) for b, (t0, t1) in zip(streams, step, strict=True)]
        n = np.array([t1 - t0 for t0, t1 in step])
        if i < turns_ragged:  # a plain cache: one length for both rows
            if ragged.length + n[0] > keep:
                ragged.crop(keep - n[0])
            batch = _padded(parts)[0]
        else:
            ragged.make_ragged(2)
            over = ragged.row_lengths() + n > keep
            ragged.crop_rows(np.where(over, keep - n, ragged.row_lengths()))
            batch, ragged.lead = _padded(parts)
        got = model.next_logits(batch, ragged)
        for r, (part, cache) in enumerate(zip(parts, alone, strict=True)):
            if cache.length + part.ids.shape[1] > keep:
                cache.crop(keep - part.ids.shape[1])
            want = model.next_logits(part, cache)
            torch.testing.assert_close(got[r], want[0], atol=1e-5, rtol=1e-5)
    assert list(ragged.row_pos) == [c.pos for c in alone]
    assert list(ragged.row_lengths()) == [c.length for c in alone]
    with pytest.raises(RuntimeError, match="crop"):
        ragged.lead = np.array([0, 0])
        model.next_logits(_padded([slice_batch(streams[0], 41, 45)] * 2)[0], ragged)


@pytest.mark.parametrize("ragged", [False, True])
def test_keep_cuts_rows_in_place_as_select_does(ragged):
    # Keeping rows in place (a copy per dropped row, rows may change places) leaves each row
    # what `select` would: the same keys, values and positions, so the next forward's logits
    # of every kept row are the same.
    model, b = tiny(), make_batch(B=6, T=20, targets=False)
    b = dataclasses.replace(b, patches=b.patches[:0], patch_index=b.patch_index[:0],
                            patch_pos=b.patch_pos[:0], kind=torch.where(
                                b.kind == Kind.IMAGE, Kind.CONTINUOUS, b.kind))  # fmt: skip
    cache = model.make_cache(capacity=32)
    if ragged:
        cache.make_ragged(6)
    model.next_logits(slice_batch(b, 0, 12), cache)
    rows = [0, 2, 5]
    selected = cache.select(rows)
    order = cache.keep(rows)
    assert sorted(order) == rows and order[0] == 0 and cache.k[0].shape[0] == 3
    nxt = slice_batch(b, 12, 13)
    pick = lambda idx: dataclasses.replace(  # noqa: E731
        nxt, ids=nxt.ids[idx], kind=nxt.kind[idx], obs_pos=nxt.obs_pos[idx]
    )
    want = model.next_logits(pick(rows), selected)
    got = model.next_logits(pick(order), cache)
    torch.testing.assert_close(got, want[[rows.index(o) for o in order]])
