"""One walk over a Gymnasium space, and the operations on nested values built on it.

A space is a tree: `Dict` and `Tuple` are inner nodes, everything else (`Box`, `Discrete`,
`MultiDiscrete`, `MultiBinary`, `Text`, ...) is a leaf. :func:`leaves` lists the leaves in
**walk order** (Dict keys sorted, Tuple entries in order), which is the order their tokens take
in the stream (the tokenizer then moves Text leaves first, see `Tokenizer`). Every other
function here (stacking values along a new leading axis, taking entry `i`, slicing the leading
axis, rebuilding a nested value from its leaves, checking that every number is finite,
flattening its numbers for retrieval) is the same walk, so the tokenizer, collection, datasets
and evaluation agree on structure by construction. Written as `functools.singledispatch` on the
space type, as Gymnasium's own `gymnasium.spaces.utils` is; register another composite space
type with `children.register`.

Values follow Gymnasium's conventions: a Dict value is a dict keyed like the space, a Tuple
value a tuple (or list), a Text value a str, anything else an array-like. A *batched* value
carries a leading axis on every leaf (arrays stacked; lists of str for Text).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import singledispatch
from typing import Any, NamedTuple

import numpy as np
from gymnasium import spaces


class SpaceError(ValueError):
    """A value does not have the structure of its space, or a Dict's keys cannot be ordered."""


class Leaf(NamedTuple):
    """One leaf of a space: the keys leading to it from the root, its space, and its printable
    path (e.g. ``obs['grid']`` or ``action[1]``) for error messages."""

    keys: tuple
    space: spaces.Space
    path: str


@singledispatch
def children(space: spaces.Space) -> list[tuple[Any, spaces.Space]] | None:
    """(key, subspace) of each child of a composite space in walk order; None for a leaf."""
    return None


@children.register
def _(space: spaces.Dict) -> list[tuple[Any, spaces.Space]]:
    return [(k, space.spaces[k]) for k in sorted_keys(space)]


@children.register
def _(space: spaces.Tuple) -> list[tuple[Any, spaces.Space]]:
    return list(enumerate(space.spaces))


def sorted_keys(space: spaces.Dict, path: str = "value") -> list:
    """A Dict's keys in token order (sorted); SpaceError if they cannot be ordered."""
    try:
        return sorted(space.spaces)
    except TypeError:
        raise SpaceError(
            f"{path}: the Dict keys {list(space.spaces)!r} have mixed types that cannot be "
            "sorted, and tokens follow sorted key order; use keys of one type (e.g. all str)"
        ) from None


def _children(space: spaces.Space, path: str) -> list[tuple[Any, spaces.Space]] | None:
    """`children`, with the path in the error of a Dict whose keys cannot be sorted."""
    if isinstance(space, spaces.Dict):
        return [(k, space.spaces[k]) for k in sorted_keys(space, path)]
    return children(space)


def leaves(space: spaces.Space, path: str = "value") -> list[Leaf]:
    """Every leaf of ``space`` in walk order (Dict keys sorted, Tuple entries in order).

    >>> space = spaces.Dict({"b": spaces.Discrete(2), "a": spaces.Tuple((spaces.Text(4),))})
    >>> [leaf.path for leaf in leaves(space, "obs")]
    ["obs['a'][0]", "obs['b']"]
    """
    out: list[Leaf] = []

    def walk(s: spaces.Space, keys: tuple, p: str) -> None:
        kids = _children(s, p)
        if kids is None:
            out.append(Leaf(keys, s, p))
            return
        for k, sub in kids:
            walk(sub, (*keys, k), f"{p}[{k!r}]")

    walk(space, (), path)
    return out


def check(space: spaces.Space, value: Any, path: str = "value") -> None:
    """Raise SpaceError unless ``value`` has the structure of ``space`` at every inner node: a
    dict with exactly the keys of each Dict, a tuple or list as long as each Tuple. Leaf values
    are not looked at (what a leaf accepts is its user's business).

    >>> check(spaces.Dict({"a": spaces.Discrete(2)}), {"b": 0}, "obs")
    Traceback (most recent call last):
    ...
    opengato.tokens.spaces.SpaceError: obs: keys do not match the Dict space (missing ['a'], unexpected ['b'])
    """
    kids = _children(space, path)
    if kids is None:
        return
    if isinstance(space, spaces.Dict):
        if not isinstance(value, dict):
            raise SpaceError(f"{path}: expected a dict for {space}, got {type(value).__name__}")
        missing, extra = set(space.spaces) - set(value), set(value) - set(space.spaces)
        if missing or extra:
            raise SpaceError(
                f"{path}: keys do not match the Dict space (missing {sorted(missing)}, "
                f"unexpected {sorted(map(str, extra))})"
            )
    elif not isinstance(value, (tuple, list)) or len(value) != len(kids):
        raise SpaceError(f"{path}: expected a tuple of {len(kids)} for {space}")
    for k, sub in kids:
        check(sub, value[k], f"{path}[{k!r}]")


def get(value: Any, keys: tuple, path: str = "value") -> Any:
    """The part of a nested ``value`` at ``keys`` (a leaf's keys), with a clear error when the
    value lacks it."""
    for i, k in enumerate(keys):
        try:
            value = value[k]
        except (KeyError, IndexError, TypeError):
            where = path + "".join(f"[{j!r}]" for j in keys[:i])
            raise SpaceError(
                f"{where}: expected a dict or tuple with entry [{k!r}], got {type(value).__name__}"
            ) from None
    return value


def build(space: spaces.Space, leaf_value: Callable[[Leaf], Any], path: str = "value") -> Any:
    """The nested value of ``space`` whose leaves are ``leaf_value(leaf)``: dicts for Dicts
    (keys sorted), tuples for Tuples."""

    def rebuild(s: spaces.Space, keys: tuple, p: str) -> Any:
        kids = _children(s, p)
        if kids is None:
            return leaf_value(Leaf(keys, s, p))
        parts = ((k, rebuild(sub, (*keys, k), f"{p}[{k!r}]")) for k, sub in kids)
        return dict(parts) if isinstance(s, spaces.Dict) else tuple(v for _, v in parts)

    return rebuild(space, (), path)


def map_leaves(
    space: spaces.Space, value: Any, fn: Callable[[Leaf, Any], Any], path: str = "value"
) -> Any:
    """``value`` with every leaf replaced by ``fn(leaf, leaf_value)``, same structure."""
    return build(space, lambda leaf: fn(leaf, get(value, leaf.keys, path)), path)


def stack(space: spaces.Space, values: list) -> Any:
    """N values of ``space`` -> one batched value with a leading axis N (lists of str for Text).

    >>> space = spaces.Dict({"n": spaces.Discrete(3), "s": spaces.Text(4)})
    >>> batched = stack(space, [{"n": 1, "s": "ab"}, {"n": 2, "s": "c"}])
    >>> batched["n"].tolist(), batched["s"]
    ([1, 2], ['ab', 'c'])
    >>> index(space, batched, 1)
    {'n': 2, 's': 'c'}
    """

    def leaf_stack(leaf: Leaf) -> Any:
        items = None
        if len(leaf.keys) == 1 and isinstance(leaf.keys[0], str):  # a Dict's own key, looked
            with contextlib.suppress(TypeError, KeyError):  # up directly (640 values a step)
                items = [v[leaf.keys[0]] for v in values]
        if items is None:
            items = [get(v, leaf.keys) for v in values]  # deeper, or an error naming the path
        return list(items) if isinstance(leaf.space, spaces.Text) else np.stack(items)

    return build(space, leaf_stack)


def index(space: spaces.Space, batched: Any, i: int) -> Any:
    """Entry ``i`` of a batched value (a Discrete leaf gives a Python int)."""

    def leaf_index(leaf: Leaf, v: Any) -> Any:
        return int(v[i]) if isinstance(leaf.space, spaces.Discrete) else v[i]

    return map_leaves(space, batched, leaf_index)


def unstack(space: spaces.Space, batched: Any, n: int) -> list:
    """The first ``n`` entries of a batched value, each as `index` gives it, in one pass per
    leaf (a policy's actions for hundreds of envs, every step: ~2 ms a step for 640 envs done
    an entry at a time).

    >>> space = spaces.Dict({"n": spaces.Discrete(3), "s": spaces.Text(4)})
    >>> unstack(space, stack(space, [{"n": 1, "s": "ab"}, {"n": 2, "s": "c"}]), 2)
    [{'n': 1, 's': 'ab'}, {'n': 2, 's': 'c'}]
    """
    columns = {}
    for leaf in leaves(space):
        v = get(batched, leaf.keys)
        columns[leaf.keys] = v[:n].tolist() if isinstance(leaf.space, spaces.Discrete) else v[:n]
    if _children(space, "value") is None:  # a single leaf: its column is the answer
        return list(columns[()])
    return [build(space, lambda leaf, i=i: columns[leaf.keys][i]) for i in range(n)]


def finite_rows(space: spaces.Space, batched: Any) -> np.ndarray:
    """Per entry of a batched value, whether all its floating-point numbers are finite (text
    and integers are): `all_finite` of each entry, at once.

    >>> space = spaces.Box(-1, 1, (2,))
    >>> finite_rows(space, np.array([[0.0, 1.0], [np.nan, 0.0]])).tolist()
    [True, False]
    """
    ok = np.ones(batch_len(space, batched), bool)
    for leaf in leaves(space):
        if isinstance(leaf.space, spaces.Text):
            continue
        a = np.asarray(get(batched, leaf.keys))
        if np.issubdtype(a.dtype, np.floating):
            ok &= np.isfinite(a.reshape(len(a), -1)).all(1)
    return ok


def head(space: spaces.Space, batched: Any, n: int) -> Any:
    """The first ``n`` entries along the leading axis of a batched value."""
    return map_leaves(space, batched, lambda leaf, v: v[:n])


def take(space: spaces.Space, batched: Any, rows: np.ndarray | list[int]) -> Any:
    """The entries ``rows`` (indices, repeats allowed) of a batched value, as a batched value.

    >>> space = spaces.Dict({"n": spaces.Discrete(3), "s": spaces.Text(4)})
    >>> picked = take(space, stack(space, [{"n": 1, "s": "ab"}, {"n": 2, "s": "c"}]), [1, 1, 0])
    >>> picked["n"].tolist(), picked["s"]
    ([2, 2, 1], ['c', 'c', 'ab'])
    """

    def leaf_take(leaf: Leaf, v: Any) -> Any:
        return [v[r] for r in rows] if isinstance(v, list) else np.asarray(v)[rows]

    return map_leaves(space, batched, leaf_take)


def batch_len(space: spaces.Space, batched: Any, path: str = "value") -> int:
    """N, the leading axis of a batched value, read off its first leaf."""
    all_leaves = leaves(space, path)
    if not all_leaves:
        raise SpaceError(f"{path}: {space} has no leaves to read a batch length off")
    first = all_leaves[0]
    v = get(batched, first.keys, path)
    try:
        return len(v)
    except TypeError:
        raise SpaceError(
            f"{first.path}: expected values with a leading axis for {first.space}, "
            f"got {type(v).__name__}"
        ) from None


def all_finite(space: spaces.Space, value: Any) -> bool:
    """Whether every floating-point number in ``value`` is finite (text and integers are)."""
    for leaf in leaves(space):
        v = get(value, leaf.keys)
        if isinstance(leaf.space, spaces.Text):
            continue
        a = np.asarray(v)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            return False
    return True


def flat_numbers(space: spaces.Space, value: Any) -> np.ndarray:
    """Every number of ``value``, leaf after leaf in walk order, as one float64 vector; Text
    leaves are left out (see `texts`). What retrieval measures distances between.

    >>> space = spaces.Dict({"b": spaces.Discrete(3), "a": spaces.Box(0, 1, (2,))})
    >>> flat_numbers(space, {"b": 2, "a": np.array([0.5, 0.25])})
    array([0.5 , 0.25, 2.  ])
    """
    parts = [
        np.asarray(get(value, leaf.keys), np.float64).ravel()
        for leaf in leaves(space)
        if not isinstance(leaf.space, spaces.Text)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def texts(space: spaces.Space, value: Any) -> tuple[str, ...]:
    """The strings of ``value``'s Text leaves, in walk order.

    >>> texts(spaces.Dict({"mission": spaces.Text(20), "x": spaces.Discrete(2)}),
    ...       {"mission": "go to the ball", "x": 1})
    ('go to the ball',)
    """
    return tuple(
        str(get(value, leaf.keys)) for leaf in leaves(space) if isinstance(leaf.space, spaces.Text)
    )
