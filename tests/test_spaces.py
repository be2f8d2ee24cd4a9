"""The space walk (opengato/tokens/spaces.py) over random nested spaces of every kind, and the
tokenizer's action round trip over the same spaces."""

import doctest
import warnings

import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from opengato.kinds import Kind
from opengato.tokens import codecs
from opengato.tokens import spaces as walk
from opengato.tokens.tokenizer import Tokenizer, TokenizeWarning

FAST = settings(max_examples=40, deadline=None)
# Box.contains warns for a 0-d value (what indexing a batch of shape-() Boxes gives)
pytestmark = pytest.mark.filterwarnings("ignore:.*Casting input x to numpy array")
QUARTERS = st.integers(-400, 400).map(lambda i: i / 4)  # exact in float32: no precision warnings
SHAPES = st.lists(st.integers(1, 3), max_size=2).map(tuple)


@st.composite
def bounded_box(draw) -> spaces.Box:
    """A float Box with bounds per element, inside [-100, 100] (some inside [-1, 1])."""
    shape = draw(SHAPES)
    n = int(np.prod(shape))
    low = np.array(draw(st.lists(QUARTERS, min_size=n, max_size=n))).reshape(shape)
    width = np.array(draw(st.lists(st.integers(1, 400), min_size=n, max_size=n))).reshape(shape)
    scale = draw(st.sampled_from([1.0, 1 / 400]))  # 1/400: often inside [-1, 1], no mu-law
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    low, high = (low * scale).astype(dtype), ((low + width / 4) * scale).astype(dtype)
    return spaces.Box(low, high, shape, dtype)


@st.composite
def integer_box(draw) -> spaces.Box:
    low = draw(st.integers(-10, 10))
    return spaces.Box(low, low + draw(st.integers(0, 20)), draw(SHAPES), np.int64)


@st.composite
def multi_discrete(draw) -> spaces.MultiDiscrete:
    nvec = draw(st.lists(st.integers(1, 10), min_size=1, max_size=4))
    start = draw(st.lists(st.integers(-3, 3), min_size=len(nvec), max_size=len(nvec)))
    return spaces.MultiDiscrete(nvec, start=start)


ACTION_LEAVES = st.one_of(
    bounded_box(),
    st.builds(
        spaces.Box,
        st.just(-np.inf),
        st.just(np.inf),
        SHAPES,
        st.sampled_from([np.float32, np.float64]),
    ),
    integer_box(),
    st.builds(spaces.Discrete, st.integers(1, 20), start=st.integers(-5, 5)),
    multi_discrete(),
    st.builds(spaces.MultiBinary, st.integers(1, 5)),
)
TEXT = st.builds(spaces.Text, st.integers(1, 10), charset=st.just("abc xyz"))


def trees(leaf: st.SearchStrategy) -> st.SearchStrategy:
    """Spaces that are a leaf, or Dicts and Tuples of trees, a few levels deep."""
    keys = st.text("abcdefgh", min_size=1, max_size=3)
    return st.recursive(
        leaf,
        lambda sub: st.one_of(
            st.dictionaries(keys, sub, min_size=1, max_size=3).map(spaces.Dict),
            st.lists(sub, min_size=1, max_size=3).map(lambda s: spaces.Tuple(tuple(s))),
        ),
        max_leaves=6,
    )


ANY_SPACE = trees(st.one_of(ACTION_LEAVES, TEXT))
ACTION_SPACE = trees(ACTION_LEAVES)


def samples(space: spaces.Space, seed: int, n: int) -> list:
    space.seed(seed)
    return [space.sample() for _ in range(n)]


def assert_same(space: spaces.Space, got, want) -> None:
    """``got`` has the structure of ``space`` and the leaf values of ``want``."""
    walk.check(space, got)
    for leaf in walk.leaves(space):
        a, b = walk.get(got, leaf.keys), walk.get(want, leaf.keys)
        if isinstance(leaf.space, spaces.Text):
            assert a == b
        else:
            np.testing.assert_array_equal(a, b)
            assert np.asarray(a).dtype == np.asarray(b).dtype or isinstance(a, int)


# -- the walk ------------------------------------------------------------------------------------


@FAST
@given(space=ANY_SPACE, seed=st.integers(0, 2**16), n=st.integers(1, 4))
def test_stack_then_index_gives_back_each_value(space, seed, n):
    values = samples(space, seed, n)
    batched = walk.stack(space, values)
    assert walk.batch_len(space, batched) == n
    for i, value in enumerate(values):
        got = walk.index(space, batched, i)
        assert_same(space, got, value)
        assert space.contains(got)


@FAST
@given(space=ANY_SPACE, seed=st.integers(0, 2**16), n=st.integers(1, 4), bad=st.integers(0, 3))
def test_unstack_and_finite_rows_are_index_and_all_finite_of_each_entry(space, seed, n, bad):
    """The batched forms a rollout uses every step give what the per-entry ones give."""
    values = samples(space, seed, n)
    batched = walk.stack(space, values)
    for got, i in zip(walk.unstack(space, batched, n), range(n), strict=True):
        want = walk.index(space, batched, i)
        assert_same(space, got, want)
        assert [type(walk.get(got, f.keys)) for f in walk.leaves(space)] == [
            type(walk.get(want, f.keys)) for f in walk.leaves(space)
        ]
    floats = [f for f in walk.leaves(space) if not isinstance(f.space, spaces.Text)
              and np.issubdtype(np.asarray(walk.get(batched, f.keys)).dtype, np.floating)]  # fmt: skip
    if floats and bad < n:  # a NaN in one entry's first float leaf
        np.asarray(walk.get(batched, floats[0].keys)).reshape(n, -1)[bad, 0] = np.nan
    expected = [walk.all_finite(space, walk.index(space, batched, i)) for i in range(n)]
    assert walk.finite_rows(space, batched).tolist() == expected
    assert expected.count(False) == (1 if floats and bad < n else 0)


@FAST
@given(space=ANY_SPACE, seed=st.integers(0, 2**16), n=st.integers(1, 4), k=st.integers(0, 4))
def test_head_is_the_stack_of_the_first_values(space, seed, n, k):
    values = samples(space, seed, n)
    first = walk.head(space, walk.stack(space, values), k)
    assert walk.batch_len(space, first) == min(k, n)
    if k:
        assert_same(space, first, walk.stack(space, values[:k]))


@FAST
@given(space=ANY_SPACE, seed=st.integers(0, 2**16), n=st.integers(1, 4),
       pick=st.lists(st.integers(0, 3), min_size=1, max_size=6))  # fmt: skip
def test_take_is_the_stack_of_the_values_picked(space, seed, n, pick):
    """Rows in any order, repeated: what a rollout fills a finished env's row with."""
    values = samples(space, seed, n)
    rows = [r % n for r in pick]
    assert_same(space, walk.take(space, walk.stack(space, values), np.array(rows)),
                walk.stack(space, [values[r] for r in rows]))  # fmt: skip


@FAST
@given(space=ANY_SPACE)
def test_leaves_in_walk_order(space):
    leaves = walk.leaves(space, "obs")
    keys = [leaf.keys for leaf in leaves]
    # Dict keys sorted, Tuple entries in order: the key paths are in lexicographic order
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for leaf in leaves:
        assert walk.children(leaf.space) is None
        assert leaf.path == "obs" + "".join(f"[{k!r}]" for k in leaf.keys)
        sub = space
        for k in leaf.keys:
            sub = sub[k]
        assert sub is leaf.space


@FAST
@given(space=ANY_SPACE, seed=st.integers(0, 2**16))
def test_build_and_map_leaves_keep_the_structure(space, seed):
    (value,) = samples(space, seed, 1)
    assert_same(space, walk.map_leaves(space, value, lambda leaf, v: v), value)
    paths = walk.build(space, lambda leaf: leaf.path)
    walk.check(space, paths)
    assert [walk.get(paths, leaf.keys) for leaf in walk.leaves(space)] == [
        leaf.path for leaf in walk.leaves(space)
    ]
    assert walk.all_finite(space, value)


def test_errors_name_the_key_path():
    space = spaces.Dict({"a": spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))})
    with pytest.raises(walk.SpaceError, match=r"obs\['a'\]: expected a tuple of 2"):
        walk.check(space, {"a": (1,)}, "obs")
    with pytest.raises(walk.SpaceError, match=r"obs: expected a dict for Dict"):
        walk.check(space, [(0, 1)], "obs")
    with pytest.raises(walk.SpaceError, match=r"missing \['a'\], unexpected \['b'\]"):
        walk.check(space, {"b": (0, 1)}, "obs")
    with pytest.raises(walk.SpaceError, match=r"obs\['a'\]: expected a dict or tuple with entry"):
        walk.get({"a": 3}, ("a", 0), "obs")
    with pytest.raises(walk.SpaceError, match=r"value\['a'\]\[0\]: expected values with a lead"):
        walk.batch_len(space, {"a": (0, 1)})
    with pytest.raises(walk.SpaceError, match=r"mixed types"):
        walk.leaves(spaces.Dict({1: spaces.Discrete(2), "b": spaces.Discrete(2)}))
    with pytest.raises(walk.SpaceError, match=r"no leaves"):
        walk.batch_len(spaces.Dict({}), {})
    nan = {"a": (0, np.float64("nan"))}
    assert not walk.all_finite(spaces.Dict({"a": spaces.Tuple((spaces.Discrete(2),) * 2)}), nan)


@pytest.mark.parametrize("module", [walk, codecs], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


# -- the tokenizer's action round trip over the same spaces ----------------------------------------


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def _companded(tok: Tokenizer, space: spaces.Box, x) -> np.ndarray:
    """A continuous value in the bins' domain [-1, 1], written out here as the paper says:
    mu-law for spaces whose bounds are not inside [-1, 1], then clipped."""
    x = np.asarray(x, np.float64)
    if not (np.all(space.low >= -1) and np.all(space.high <= 1)):
        mu, M = tok.config.mu, tok.config.M
        x = np.sign(x) * np.log(np.abs(x) * mu + 1) / np.log(M * mu + 1)
    return np.clip(x, -1, 1)


def _bounds(space: spaces.Space, side: int):
    """The lowest (side 0) or highest (side 1) value of a leaf; the float32 limits for an
    unbounded float Box."""
    if isinstance(space, spaces.Discrete):
        return int(space.start) + side * (int(space.n) - 1)
    if isinstance(space, spaces.MultiDiscrete):
        return space.start + side * (space.nvec - 1)
    if isinstance(space, spaces.MultiBinary):
        return np.full(space.shape, side, space.dtype)
    bound = np.broadcast_to(space.high if side else space.low, space.shape)
    big = np.finfo(np.float32).max if np.issubdtype(space.dtype, np.floating) else 0
    return np.clip(bound, -big, big).astype(space.dtype) if big else bound.astype(space.dtype)


@FAST
@given(space=ACTION_SPACE, seed=st.integers(0, 2**16))
def test_action_round_trip(tok, space, seed):
    ranges = tok.action_token_ranges(space)
    values = samples(space, seed, 3)
    ids = np.stack([tok.tokenize_action(space, v) for v in values])  # (3, n_act)
    assert ids.shape[1] == len(ranges)
    assert ((ids >= ranges[:, 0]) & (ids < ranges[:, 1])).all()
    one_bin = 2.0 / tok.config.num_bins
    for value, back in zip(values, [tok.detokenize(space, row) for row in ids], strict=True):
        assert space.contains(back)
        for leaf in walk.leaves(space):
            v, b = walk.get(value, leaf.keys), walk.get(back, leaf.keys)
            if codecs.leaf_kind(leaf.space, leaf.path) == Kind.CONTINUOUS:
                err = np.abs(_companded(tok, leaf.space, b) - _companded(tok, leaf.space, v))
                assert (err <= one_bin + 1e-5).all(), (leaf.path, v, b)
            else:
                np.testing.assert_array_equal(b, v)
    batched = tok.detokenize(space, ids)  # a batch decodes as each row does
    assert_same(space, walk.index(space, batched, 0), tok.detokenize(space, ids[0]))


@FAST
@given(space=ACTION_SPACE)
def test_both_bounds_reachable(tok, space):
    """The lowest and highest legal values encode to the ends of the legal id ranges."""
    ranges = tok.action_token_ranges(space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenizeWarning)  # the float32 limits saturate
        low = tok.tokenize_action(space, walk.build(space, lambda leaf: _bounds(leaf.space, 0)))
        high = tok.tokenize_action(space, walk.build(space, lambda leaf: _bounds(leaf.space, 1)))
    np.testing.assert_array_equal(low, ranges[:, 0])
    np.testing.assert_array_equal(high, ranges[:, 1] - 1)
