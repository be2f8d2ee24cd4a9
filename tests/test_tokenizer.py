"""The tokenizer: round trips for every space kind, id ranges, mu-law, loss mask, bad input."""

import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from opengato.kinds import Kind
from opengato.tokens.codecs import mu_law_decode, mu_law_encode, normalize_patches
from opengato.tokens.seq import TokenSeq
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def tok_sep() -> Tokenizer:
    return Tokenizer(TokenizerConfig(discrete_layout="separate"))


MISSION = spaces.Text(max_length=200, charset="abcdefghijklmnopqrstuvwxyz ,")
BABYAI = spaces.Dict(
    {
        "direction": spaces.Discrete(4),
        "grid": spaces.Box(0, 10, (7, 7, 3), np.int64),
        "mission": MISSION,
    }
)
DISCRETE_SPACES = [
    spaces.Discrete(7),
    spaces.Discrete(5, start=-2),
    spaces.Discrete(1024),
    spaces.MultiDiscrete([3, 5, 1024]),
    spaces.MultiDiscrete([[2, 3], [4, 5]]),
    spaces.MultiBinary(6),
    spaces.MultiBinary([2, 3]),
    spaces.Box(0, 10, (7, 7, 3), np.int64),
    spaces.Box(-3, 3, (4,), np.int32),
    spaces.Tuple((spaces.Discrete(3), spaces.MultiBinary(2))),
    spaces.Dict(
        {
            "b": spaces.Discrete(3),
            "a": spaces.Dict({"z": spaces.Discrete(2), "y": spaces.MultiDiscrete([4, 4])}),
        }
    ),
]


def _sample(space: spaces.Space, seed: int):
    space.seed(seed)
    return space.sample()


def assert_equal(a, b):
    if isinstance(a, dict):
        assert list(a) == sorted(b) or set(a) == set(b)
        for k in a:
            assert_equal(a[k], b[k])
    elif isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            assert_equal(x, y)
    elif isinstance(a, str):
        assert a == b
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("space", DISCRETE_SPACES, ids=str)
@pytest.mark.parametrize("layout", ["paper", "separate"])
def test_discrete_round_trip_exact(space, layout, tok, tok_sep):
    t = tok if layout == "paper" else tok_sep
    for seed in range(5):
        x = _sample(space, seed)
        ids = t.tokenize_action(space, x)
        lo, hi = (
            (0, t.config.num_discrete)
            if layout == "paper"
            else (t.discrete_offset, t.discrete_offset + 1024)
        )
        assert ((ids >= lo) & (ids < hi)).all()
        assert_equal(t.detokenize(space, ids), x)


def test_discrete_layout_ids(tok, tok_sep):
    assert tok.tokenize_action(spaces.Discrete(7), 3).tolist() == [
        3
    ]  # the paper: the integer itself
    assert tok_sep.tokenize_action(spaces.Discrete(7), 3).tolist() == [tok_sep.discrete_offset + 3]
    assert tok_sep.discrete_offset >= tok_sep.continuous_offset + tok_sep.config.num_bins


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_continuous_round_trip_within_half_bin(tok, data):
    bounded = data.draw(st.booleans())
    space = (
        spaces.Box(-1.0, 1.0, (5,), np.float32)
        if bounded
        else spaces.Box(-np.inf, np.inf, (5,), np.float64)
    )
    lim = 1.0 if bounded else 256.0  # beyond M=256 companded values saturate at the edge bins
    x = np.array(
        data.draw(st.lists(st.floats(-lim, lim, allow_nan=False), min_size=5, max_size=5)),
        dtype=space.dtype,
    )
    ids = tok.tokenize_action(space, x)
    assert ((ids >= tok.continuous_offset) & (ids < tok.continuous_offset + 1024)).all()
    y = tok.detokenize(space, ids)
    half_bin = 1.0 / 1024
    if bounded:  # no companding: error at most half a bin in value space
        assert np.all(np.abs(y - x) <= half_bin + 1e-6)
    else:  # companded: error at most half a bin after companding (values here stay inside the range)
        fx, fy = mu_law_encode(x.astype(np.float64)), mu_law_encode(y.astype(np.float64))
        assert np.all(np.abs(fx - fy) <= half_bin + 1e-9)


def test_mu_law_matches_formula():
    assert mu_law_encode(np.array(1.0)) == pytest.approx(0.4546, abs=1e-4)
    x = np.array([-300.0, -1.0, -0.01, 0.0, 0.5, 256.0])
    expected = np.sign(x) * np.log(np.abs(x) * 100 + 1) / np.log(256 * 100 + 1)
    np.testing.assert_allclose(mu_law_encode(x), expected)
    np.testing.assert_allclose(mu_law_encode(np.array(256.0)), 1.0)
    np.testing.assert_allclose(mu_law_decode(mu_law_encode(x)), x, rtol=1e-9, atol=1e-12)


def test_mu_law_modes():
    box = spaces.Box(-1.0, 1.0, (1,), np.float32)
    never = Tokenizer(TokenizerConfig(mu_law="never"))
    always = Tokenizer(TokenizerConfig(mu_law="always"))
    x = np.array([0.5], np.float32)
    # uncompanded 0.5 lands in bin 768; companded F(0.5) ~ 0.3898 lands in bin 711
    assert never.tokenize_action(box, x)[0] - never.continuous_offset == 768
    assert always.tokenize_action(box, x)[0] - always.continuous_offset == int(
        (mu_law_encode(0.5) + 1) * 512
    )
    # 'when_needed' companding is decided per space: a Box inside [-1, 1] is not companded
    assert Tokenizer().tokenize_action(box, x)[0] - Tokenizer().continuous_offset == 768


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=200))
def test_text_round_trip_exact(tok, text):
    ids = tok.encode_text(text)
    assert ((ids >= 0) & (ids < tok.config.text_vocab_size)).all()
    assert tok.decode_text(ids) == text


def test_text_document_in_loss_with_eos(tok):
    seq = tok.tokenize_text("Hello world")
    assert seq.ids[-1] == tok.eos_id and seq.target_mask.all() and (seq.kind == Kind.TEXT).all()
    assert tok.decode_text(seq.ids) == "Hello world"


def test_nested_dict_with_text_round_trip(tok):
    for seed in range(3):
        x = {"direction": 2, "grid": _sample(BABYAI["grid"], seed), "mission": "go to the red ball"}
        seq = tok.tokenize_observation(BABYAI, x)
        # text first, then tensors in sorted key order: direction (1), grid (147)
        n_text = len(tok.encode_text(x["mission"]))
        assert (seq.kind[:n_text] == Kind.TEXT).all() and (seq.kind[n_text:] == Kind.DISCRETE).all()
        assert seq.ids[n_text] == 2
        np.testing.assert_array_equal(seq.obs_pos, np.arange(len(seq)))
        assert_equal(tok.detokenize(BABYAI, seq.ids), x)


def test_tuple_and_dict_order(tok):
    space = spaces.Dict(
        {"b": spaces.Discrete(10), "a": spaces.Tuple((spaces.Discrete(10), spaces.Discrete(10)))}
    )
    ids = tok.tokenize_action(space, {"b": 7, "a": (1, 2)})
    assert ids.tolist() == [1, 2, 7]  # keys in lexicographic order, tuples in order


def test_episode_layout_and_loss_mask(tok):
    obs_space = spaces.Box(-np.inf, np.inf, (39,), np.float64)
    act_space = spaces.Box(-1, 1, (4,), np.float32)
    T = 500
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(T, 39)) * 3, rng.uniform(-1, 1, (T, 4)).astype(np.float32)
    seq = tok.tokenize_episode(obs_space, act_space, obs, act)
    assert len(seq) == T * 44
    np.testing.assert_array_equal(seq.timestep_starts, np.arange(T) * 44)
    step = slice(0, 44)
    assert (seq.kind[step][:39] == Kind.CONTINUOUS).all() and seq.kind[step][39] == Kind.SEPARATOR
    assert seq.ids[39] == tok.separator_id
    np.testing.assert_array_equal(seq.obs_pos[step], np.r_[np.arange(39), [-1] * 5])
    # the loss covers exactly the action tokens (no text here)
    np.testing.assert_array_equal(
        seq.target_mask.reshape(T, 44), np.tile(np.r_[[False] * 40, [True] * 4], (T, 1))
    )
    # per-step tokens equal the single-step functions
    t = 123
    single = np.r_[
        tok.tokenize_observation(obs_space, obs[t]).ids,
        tok.separator_id,
        tok.tokenize_action(act_space, act[t]),
    ]
    np.testing.assert_array_equal(seq.ids[t * 44 : (t + 1) * 44], single)


def test_episode_with_text_matches_per_step(tok):
    T = 6
    rng = np.random.default_rng(1)
    missions = [
        "go to the red ball",
        "open the door",
        "pick up a key",
        "go",
        "a b c",
        "put the box next to the ball",
    ]
    obs = {
        "direction": rng.integers(0, 4, T),
        "grid": rng.integers(0, 11, (T, 7, 7, 3)),
        "mission": missions,
    }
    act = rng.integers(0, 7, T)
    seq = tok.tokenize_episode(BABYAI, spaces.Discrete(7), obs, act)
    parts = []
    for t in range(T):
        o = tok.tokenize_observation(
            BABYAI,
            {"direction": obs["direction"][t], "grid": obs["grid"][t], "mission": missions[t]},
        )
        parts.append(np.r_[o.ids, tok.separator_id, act[t]])
    np.testing.assert_array_equal(seq.ids, np.concatenate(parts))
    starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
    np.testing.assert_array_equal(seq.timestep_starts, starts)
    # the paper's mask: action tokens are targets; the mission, though text, is an observation
    np.testing.assert_array_equal(
        seq.target_mask, (seq.obs_pos == -1) & (seq.kind != Kind.SEPARATOR)
    )
    assert not seq.target_mask[seq.kind == Kind.TEXT].any()


def test_images_patches_and_positions(tok):
    space = spaces.Dict(
        {"image": spaces.Box(0, 255, (40, 24, 3), np.uint8), "proprio": spaces.Box(-1, 1, (3,))}
    )
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)
    seq = tok.tokenize_observation(space, {"image": img, "proprio": np.zeros(3, np.float32)})
    # padded to 48 x 32: 3 x 2 patches, raster order, before the tensor tokens
    assert (seq.kind[:6] == Kind.IMAGE).all() and (seq.kind[6:] == Kind.CONTINUOUS).all()
    assert seq.patches.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(
        seq.patches[1], np.pad(img[0:16, 16:24], ((0, 0), (0, 8), (0, 0)))
    )
    np.testing.assert_array_equal(
        seq.patches[4], np.pad(img[32:40, 0:16], ((0, 8), (0, 0), (0, 0)))
    )
    pos = seq.patch_pos.astype(int)
    assert (pos[:, 0] < pos[:, 1]).all() and (pos[:, 2] < pos[:, 3]).all() and pos.max() <= 128
    assert pos[0].tolist() == [0, 43, 0, 64] and pos[5].tolist() == [85, 128, 64, 128]
    x = normalize_patches(seq.patches)
    assert x.shape == (6, 3, 16, 16) and x.min() >= -0.25 and x.max() <= 0.25
    assert not seq.target_mask.any()


def test_grayscale_image_and_caption(tok):
    img = np.full((16, 32, 1), 255, np.uint8)
    seq = tok.tokenize_caption(img, "a white square")
    assert (seq.kind[:2] == Kind.IMAGE).all() and seq.patches.shape == (2, 16, 16, 3)
    assert not seq.target_mask[:2].any() and seq.target_mask[2:].all() and seq.ids[-1] == tok.eos_id
    assert tok.decode_text(seq.ids[2:]) == "a white square"


def test_action_token_ranges_decode_inside_space(tok):
    act = spaces.Dict(
        {
            "move": spaces.Box(-2.0, 2.0, (2,), np.float32),
            "grip": spaces.Discrete(3),
            "keys": spaces.MultiBinary(2),
        }
    )
    ranges = tok.action_token_ranges(act)
    assert ranges.shape == (5, 2)
    assert ranges[0].tolist() == [0, 3] and ranges[1].tolist() == [0, 2]  # grip, keys, then move
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = np.array([rng.integers(lo, hi) for lo, hi in ranges])
        assert act.contains(tok.detokenize(act, ids))
    # the extreme legal bins decode inside the bounds
    lo_ids = ranges[:, 0]
    assert act.contains(tok.detokenize(act, lo_ids))


def test_batched_observations_match_single(tok):
    space = spaces.Box(-np.inf, np.inf, (4,), np.float32)
    obs = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    rows = tok.tokenize_observations(space, obs, 5)
    for i in range(5):
        np.testing.assert_array_equal(rows[i].ids, tok.tokenize_observation(space, obs[i]).ids)


def test_batched_text_observations_match_single(tok):
    """Observations with text, laid out a group of equal text lengths at a time (tokens/seq.py):
    each equals the observation tokenised alone, and an episode's stream the one of its steps."""
    text = spaces.Text(40, min_length=0, charset="abcdefghijklmnopqrstuvwxyz ")
    space = spaces.Dict({"mission": text, "image": spaces.Box(0, 255, (16, 32, 3), np.uint8),
                         "d": spaces.Discrete(4)})  # fmt: skip
    missions = ["go to the red ball", "open the door", "go to the red ball", "", "open the door",
                "pick up a key", "go to the red ball"]  # fmt: skip
    rng = np.random.default_rng(0)
    n = len(missions)
    obs = {"mission": missions, "image": rng.integers(0, 256, (n, 16, 32, 3), dtype=np.uint8),
           "d": rng.integers(0, 4, n)}  # fmt: skip
    one = [tok.tokenize_observation(space, {k: v[i] for k, v in obs.items()}) for i in range(n)]
    assert 1 < len({len(s) for s in one}) < n  # several lengths, some shared by several rows
    for got, want in zip(tok.tokenize_observations(space, obs, n), one, strict=True):
        for f in (
            "ids",
            "kind",
            "obs_pos",
            "target_mask",
            "timestep_starts",
            "patches",
            "patch_pos",
        ):
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)
    act = spaces.Discrete(3)
    episode = tok.tokenize_episode(space, act, obs, np.arange(n) % 3)
    steps = TokenSeq.concat([TokenSeq.concat([o, tok.separator(), TokenSeq(
        np.array([a], np.int32), np.array([Kind.DISCRETE], np.uint8), np.array([-1], np.int16),
        np.ones(1, bool), np.zeros(0, np.int64))]) for o, a in zip(one, np.arange(n) % 3, strict=True)])  # fmt: skip
    np.testing.assert_array_equal(episode.ids, steps.ids)
    np.testing.assert_array_equal(episode.patches, steps.patches)


def test_batched_detokenize(tok):
    space = spaces.MultiDiscrete([3, 4])
    ids = np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(tok.detokenize(space, ids), ids)


def test_concat():
    t = Tokenizer()
    a, b = t.tokenize_text("ab"), t.tokenize_text("cd")
    c = TokenSeq.concat([a, b])
    assert c.timestep_starts.tolist() == [0, len(a)]
