"""The tokenizer on bad input and at the edges: clear errors naming the key, image bounds,
saturation warnings, legal action ranges, the text model."""

import warnings

import numpy as np
import pytest
from gymnasium import spaces
from test_tokenizer import assert_equal

from opengato.tokens import spaces as walk
from opengato.tokens.codecs import TokenizeError
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig, TokenizeWarning


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


@pytest.mark.parametrize(
    "space, value, match",
    [
        (spaces.Box(-1, 1, (3,)), np.array([0.0, np.nan, 0.0], np.float32), r"obs.*NaN"),
        (
            spaces.Box(-np.inf, np.inf, (3,)),
            np.array([0.0, np.inf, 0.0], np.float32),
            r"NaN or infinite",
        ),
        (spaces.Box(-1, 1, (3,)), np.zeros(4, np.float32), r"shape \(4,\)"),
        (spaces.Box(-1, 1, (3,)), np.array(["a", "b", "c"]), r"dtype"),
        (spaces.Box(-1, 1, (3,)), np.array([0.0, 2.0, 0.0], np.float32), r"outside \[-1, 1\]"),
        (spaces.Discrete(4), 4, r"outside Discrete\(4\)"),
        (spaces.Discrete(4), 1.5, r"non-integer"),
        (spaces.Discrete(2000), 3, r"2000 values but only 1024"),
        (spaces.Graph(spaces.Box(0, 1, (2,)), None), None, r"unsupported space Graph"),
        (spaces.Sequence(spaces.Discrete(2)), (1, 0), r"unsupported space Sequence"),
        (spaces.Text(5, charset="ab"), "abc", r"not in Text"),
    ],
    ids=lambda x: str(x)[:30],
)
def test_bad_input_errors(tok, space, value, match):
    with pytest.raises(TokenizeError, match=match):
        tok.tokenize_observation(space, value)


def test_float32_rounding_past_either_bound_is_accepted(tok):
    """A float32 step past a bound is rounding whatever the sign: Box(0, 100) takes one past
    100 as Box(-100, 100) takes one past -100 (the tolerance followed the lower bound alone)."""
    past = np.nextafter(np.float32(100), np.float32(np.inf))
    for space, x in ((spaces.Box(0, 100, (1,)), past), (spaces.Box(-100, 100, (1,)), -past)):
        tok.tokenize_observation(space, np.array([x], np.float32))
    with pytest.raises(TokenizeError, match="outside"):
        tok.tokenize_observation(spaces.Box(0, 100, (1,)), np.array([100.01], np.float32))


def test_error_names_key_path(tok):
    space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (16, 16, 3), np.uint8),
            "state": spaces.Dict({"pos": spaces.Box(-1, 1, (2,))}),
        }
    )
    bad = {
        "image": np.zeros((16, 16, 3), np.uint8),
        "state": {"pos": np.array([0.0, np.nan], np.float32)},
    }
    with pytest.raises(TokenizeError, match=r"obs\['state'\]\['pos'\]"):
        tok.tokenize_observation(space, bad)
    with pytest.raises(TokenizeError, match=r"missing \['state'\]"):
        tok.tokenize_observation(space, {"image": bad["image"]})
    with pytest.raises(TokenizeError, match=r"action spaces must be discrete or continuous"):
        tok.tokenize_action(spaces.Text(5), "ab")


def test_config_validation():
    with pytest.raises(ValueError, match="text_vocab_size"):
        TokenizerConfig(text_vocab_size=512)
    with pytest.raises(ValueError, match="discrete_layout"):
        TokenizerConfig(discrete_layout="other")


def test_text_model_training_is_deterministic_and_cli(tmp_path):
    from opengato.cli import main
    from opengato.tokens.text import default_text_corpus, train_text_model

    corpus = default_text_corpus()[:200_000]
    import sentencepiece as spm

    def pieces(path):
        sp = spm.SentencePieceProcessor(model_file=str(path))
        return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]

    # the model file also records its temp training paths, so compare the vocabulary itself
    assert pieces(train_text_model(corpus, 800, tmp_path / "a.model")) == pieces(
        train_text_model(corpus, 800, tmp_path / "b.model")
    )
    (tmp_path / "corpus.txt").write_text(corpus)
    assert (
        main(
            [
                "text-model",
                "--out",
                str(tmp_path / "c.model"),
                "--corpus",
                str(tmp_path / "corpus.txt"),
                "--vocab-size",
                "1024",
            ]
        )
        == 0
    )
    tok = Tokenizer(TokenizerConfig(text_model=str(tmp_path / "c.model"), text_vocab_size=1024))
    assert tok.decode_text(tok.encode_text("go to the red ball")) == "go to the red ball"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer(TokenizerConfig(text_model=str(tmp_path / "missing.model")))


# -- regressions found by a new user -----------------------------------------------------------

WORDS = spaces.Text(max_length=50, charset="abcdefghijklmnopqrstuvwxyz ")
NESTED_WITH_TEXT = [
    # a text-free sibling ("a") precedes the subtree holding the text in walk order
    (
        spaces.Dict(
            {
                "a": spaces.Discrete(10),
                "b": spaces.Dict({"mission": WORDS, "x": spaces.Box(0, 9, (2,), np.int64)}),
            }
        ),
        {"a": 3, "b": {"mission": "go to the door", "x": np.array([5, 8])}},
    ),
    (
        spaces.Dict(
            {
                "a": spaces.Dict({"mission": WORDS, "x": spaces.Discrete(10)}),
                "0": spaces.MultiDiscrete([10, 10]),
            }
        ),
        {"a": {"mission": "pick up the key", "x": 9}, "0": np.array([1, 2])},
    ),
    (
        spaces.Tuple(
            (spaces.Discrete(10), spaces.Tuple((WORDS, spaces.Discrete(10), spaces.Discrete(10))))
        ),
        (4, ("open the box", 7, 8)),
    ),
]


@pytest.mark.parametrize("space, value", NESTED_WITH_TEXT, ids=lambda x: str(x)[:40])
def test_nested_text_round_trip_is_exact(tok, space, value):
    ids = tok.tokenize_observation(space, value).ids
    assert_equal(tok.detokenize(space, ids), value)
    # batched: every leaf comes back with a leading axis of two equal rows
    assert_equal(tok.detokenize(space, np.stack([ids, ids])), walk.stack(space, [value, value]))


@pytest.mark.parametrize(
    "pixels",
    [
        np.full((16, 16, 3), 300),  # plain ints above 255
        np.full((16, 16, 3), -1),  # negative ints
        np.full((16, 16, 3), 256, np.uint16),  # a wider unsigned dtype
        np.full((16, 16, 3), 260.0),  # whole floats
    ],
    ids=["int300", "negative", "uint16", "float"],
)
def test_image_values_outside_bounds_raise(tok, pixels):
    space = spaces.Dict({"image": spaces.Box(0, 255, (16, 16, 3), np.uint8)})
    with pytest.raises(TokenizeError, match=r"obs\['image'\].*outside \[0, 255\]"):
        tok.tokenize_observation(space, {"image": pixels})
    # in-range pixels of a wider dtype are still accepted, and equal their uint8 encoding
    ok = np.clip(pixels, 0, 255)
    seq = tok.tokenize_observation(space, {"image": ok})
    np.testing.assert_array_equal(seq.patches[0], ok.astype(np.uint8))


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(-10.0, 10.0, (1,), np.float32),
        spaces.Box(-0.5, 0.5, (1,), np.float32),
        spaces.Box(-0.5, 0.5, (1,), np.float64),
        spaces.Box(-1.0, 1.0, (1,), np.float32),
        spaces.Box(-3.0, 7.0, (1,), np.float64),
        spaces.Box(0.0, 0.001, (1,), np.float32),  # narrower than one bin
        spaces.Box(np.array([-10.0, -0.5]), np.array([10.0, 0.5]), (2,), np.float64),
        spaces.Box(-np.inf, np.inf, (1,), np.float64),
    ],
    ids=str,
)
@pytest.mark.parametrize("mode", ["when_needed", "always", "never"])
@pytest.mark.filterwarnings(
    "ignore::opengato.tokens.tokenizer.TokenizeWarning"
)  # saturation is fine here
def test_action_ranges_contain_every_legal_value(space, mode):
    t = Tokenizer(TokenizerConfig(mu_law=mode))
    ranges = t.action_token_ranges(space)
    lo = np.broadcast_to(space.low, space.shape)
    hi = np.broadcast_to(space.high, space.shape)
    finite_lo, finite_hi = np.maximum(lo, -1e3), np.minimum(hi, 1e3)
    inner = np.linspace(finite_lo, finite_hi, 101)
    for x in [finite_lo, finite_hi, *inner]:
        ids = t.tokenize_action(space, np.asarray(x, space.dtype))
        assert ((ids >= ranges[:, 0]) & (ids < ranges[:, 1])).all(), (x, ids, ranges)
    # every id in the ranges still decodes inside the space
    for ids in (ranges[:, 0], ranges[:, 1] - 1):
        assert space.contains(t.detokenize(space, ids))


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(-np.inf, np.inf, (2,), np.int64),  # gymnasium stores the int64 limits
        spaces.Box(0, np.iinfo(np.uint64).max, (2,), np.uint64),
        spaces.Box(-(2**62), 2**62, (2,), np.int64),
    ],
    ids=str,
)
def test_huge_integer_box_names_num_discrete(tok, space):
    match = r"action: Box\(.*\) has \d+ values but only 1024 discrete tokens.*num_discrete"
    with pytest.raises(TokenizeError, match=match):
        tok.tokenize_action(space, np.zeros(2, space.dtype))
    with pytest.raises(TokenizeError, match=match):
        tok.action_token_ranges(space)
    with pytest.raises(TokenizeError, match=r"values but only 1024"):
        tok.detokenize(space, np.zeros(2, np.int64))


def test_mu_law_saturation_warns_once_per_leaf(tok):
    space = spaces.Dict({"big": spaces.Box(-1e4, 1e4, (2,), np.float64)})
    inside = {"big": np.array([255.0, -256.0])}
    beyond = {"big": np.array([300.0, 0.0])}
    path = "saturation_test_obs"  # a path of its own: the warning is once per tokenizer per leaf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.tokenize_observation(space, inside, path=path)  # inside [-M, M]: silent
    with pytest.warns(TokenizeWarning, match=r"saturation_test_obs\['big'\].*M = 256"):
        seq = tok.tokenize_observation(space, beyond, path=path)
    assert seq.ids[0] == tok.continuous_offset + 1023  # saturated at the edge bin
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.tokenize_observation(space, beyond, path=path)  # once per leaf, not per call
    # 'never' only clips: values outside [-1, 1] saturate too, and say so
    never = Tokenizer(TokenizerConfig(mu_law="never"))
    with pytest.warns(TokenizeWarning, match=r"not mu-law companded"):
        never.tokenize_observation(space, beyond, path="saturation_test_never")


def test_non_str_text_and_mixed_dict_keys_raise_tokenize_error(tok):
    space = spaces.Dict({"inner": spaces.Dict({"mission": WORDS})})
    with pytest.raises(TokenizeError, match=r"obs\['inner'\]\['mission'\].*got int"):
        tok.tokenize_observation(space, {"inner": {"mission": 5}})
    with pytest.raises(TokenizeError, match=r"obs\['inner'\]\['mission'\].*not a str"):
        tok.tokenize_observations(space, {"inner": {"mission": ["ok", 5]}}, 2)
    mixed = spaces.Dict({"outer": spaces.Dict({1: spaces.Discrete(2), "a": spaces.Discrete(3)})})
    value = {"outer": {1: 0, "a": 1}}
    match = r"\['outer'\]: the Dict keys \[1, 'a'\] have mixed types"
    with pytest.raises(TokenizeError, match="obs" + match):
        tok.tokenize_observation(mixed, value)
    with pytest.raises(TokenizeError, match="action" + match):
        tok.action_token_ranges(mixed)
    with pytest.raises(TokenizeError, match="value" + match):
        tok.detokenize(mixed, np.array([0, 1]))
    with pytest.raises(TokenizeError, match="action" + match):
        tok.tokenize_episode(
            mixed, mixed, {"outer": {1: [0], "a": [1]}}, {"outer": {1: [0], "a": [1]}}
        )


def test_single_str_for_a_batch_is_an_error(tok):
    with pytest.raises(TokenizeError, match=r"obs: got a single str for a batch of 3"):
        tok.tokenize_observations(spaces.Text(5), "abc", 3)
    space = spaces.Dict({"mission": WORDS, "d": spaces.Discrete(4)})
    with pytest.raises(TokenizeError, match=r"obs\['mission'\]: got a single str for a batch of 3"):
        tok.tokenize_observations(space, {"mission": "abc", "d": np.array([0, 1, 2])}, 3)
    # a single value where a batch is due names the batch shape
    with pytest.raises(TokenizeError, match=r"\(3, 4\) for a batch of 3"):
        tok.tokenize_observations(spaces.Box(-1, 1, (4,)), np.zeros(4, np.float32), 3)
    # the intended uses still work: one str for one value, a list of str for a batch
    rows = tok.tokenize_observations(spaces.Text(5), ["abc", "de", "f"], 3)
    assert [tok.decode_text(r.ids) for r in rows] == ["abc", "de", "f"]
    assert tok.decode_text(tok.tokenize_observation(spaces.Text(5), "abc").ids) == "abc"


def test_text_model_cache_is_read_when_used(tmp_path, monkeypatch):
    from opengato.tokens import text

    monkeypatch.setenv("OPENGATO_CACHE", str(tmp_path / "a"))
    assert text.default_text_model_path(1024).is_relative_to(tmp_path / "a")
    monkeypatch.setenv("OPENGATO_CACHE", str(tmp_path / "b"))
    assert text.default_text_model_path(1024).is_relative_to(tmp_path / "b")


def test_saturation_warning_is_per_tokenizer():
    space = spaces.Box(-2.0, 2.0, (1,), np.float64)  # 'never': values past +-1 saturate
    for t in (
        Tokenizer(TokenizerConfig(mu_law="never")),
        Tokenizer(TokenizerConfig(mu_law="never")),
    ):
        with pytest.warns(TokenizeWarning, match=r"per_tokenizer: values"):
            t.tokenize_observation(space, np.array([1.5]), path="per_tokenizer")


def test_observed_texts_are_remembered_read_only_and_bounded(tok, monkeypatch):
    """A Text leaf's ids come from a memo (missions repeat every step): the same ids as
    encode_text, read-only (no caller can corrupt a later observation's), cleared when full, and
    each distinct text checked against the space once a batch, a bad one still refused."""
    import opengato.tokens.tokenizer as tokenizer

    space = spaces.Dict({"m": spaces.Text(40, charset="abcdefghijklmnopqrstuvwxyz ")})
    batch = {"m": ["go to the red ball", "open the door", "go to the red ball"]}
    rows = [r.ids for _, r in tok.observation_groups(space, batch, 3)]
    again = [r.ids for _, r in tok.observation_groups(space, batch, 3)]
    assert all((a == b).all() for a, b in zip(rows, again, strict=True))
    memo = tok._memo_text("open the door")
    assert (memo == tok.encode_text("open the door")).all() and not memo.flags.writeable
    monkeypatch.setattr(tokenizer, "TEXT_MEMO", 2)
    tok._memo_text("a third text")  # the memo held 2: it starts again
    assert list(tok._text_ids) == ["a third text"]
    with pytest.raises(Exception, match="is not in"):
        tok.observation_groups(space, {"m": ["ok", "x" * 41]}, 2)


def test_prompt_cuts_are_whole_timesteps_or_nothing(tok):
    """A prompt budget shorter than the timestep at the cut gives no prompt, as training gives
    such a window none (it kept the last or first tokens, mid-observation)."""
    from opengato.tokens.seq import head_timesteps, tail_timesteps

    space = spaces.Box(-1, 1, (9,))
    ep = tok.tokenize_episode(space, spaces.Discrete(3), np.zeros((4, 9), np.float32), [0, 1, 2, 0])
    step = len(ep) // 4  # 9 observation tokens, the separator, 1 action
    for cut in (head_timesteps, tail_timesteps):
        assert len(cut(ep, 2 * step + 3)) == 2 * step and len(cut(ep, step - 1)) == 0
    assert tail_timesteps(ep, 2 * step + 3).obs_pos[0] == 0  # it starts an observation
