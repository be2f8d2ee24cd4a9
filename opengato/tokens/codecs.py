"""Leaf codecs: the values of one leaf of a space, checked, and the numbers they become before
the tokenizer adds its id offsets (docs/method.md §1).

Continuous values are mu-law companded and cut into uniform bins over [-1, 1]; discrete values
count up from their space's lowest value; images are zero-padded to whole 16x16 patches that
carry their quantised row and column intervals. Every function takes a batch of B values with a
leading axis, and the key path of its leaf for error messages. Pure numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from opengato.kinds import Kind

_ARRAY_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


class TokenizeError(ValueError):
    """A value or space the tokenizer cannot encode; the message names the key path and problem."""


def leaf_kind(space: spaces.Space, path: str) -> Kind:
    """The kind of tokens a leaf space becomes: TEXT, IMAGE (a uint8 Box of shape (H, W, 1 or
    3)), CONTINUOUS (a float Box) or DISCRETE (everything else the tokenizer handles)."""
    if isinstance(space, spaces.Text):
        return Kind.TEXT
    if not isinstance(space, _ARRAY_SPACES):
        raise TokenizeError(
            f"{path}: unsupported space {space} ({type(space).__name__}); the tokenizer handles "
            "Box, Discrete, MultiDiscrete, MultiBinary, Text, Dict and Tuple"
        )
    if isinstance(space, spaces.Box):
        if space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[-1] in (1, 3):
            return Kind.IMAGE
        if np.issubdtype(space.dtype, np.floating):
            return Kind.CONTINUOUS
    return Kind.DISCRETE


# ---------------------------------------------------------------------------------------------
# Checked values of a leaf


def text_values(space: spaces.Text, values: Any, batch: int, path: str) -> list[str]:
    """The B strings of a Text leaf, each inside the space. A lone str is one value, never a
    batch of characters."""
    if isinstance(values, str):
        if batch != 1:
            raise TokenizeError(
                f"{path}: got a single str for a batch of {batch} values of {space}; "
                f"pass a list of {batch} str, one per value"
            )
        values = [values]
    try:
        texts = list(values)
    except TypeError:
        raise TokenizeError(
            f"{path}: expected a str for {space}, got {type(values).__name__}"
        ) from None
    if len(texts) != batch:
        raise TokenizeError(f"{path}: expected {batch} str value(s) for {space}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TokenizeError(
                f"{path}: value {i} is a {type(t).__name__}, not a str, for {space}"
            )
    for t in dict.fromkeys(texts):  # each distinct text once (a batch's missions repeat)
        if not space.contains(t):
            raise TokenizeError(f"{path}: {t!r} is not in {space}")
    return texts


def array_values(
    space: spaces.Space, values: Any, batch: int, path: str, integral: bool
) -> np.ndarray:
    """The B values of an array leaf as one (B, *space.shape) array: numeric, finite and, when
    ``integral``, whole numbers. A single value (no leading axis) is a batch of one."""
    x = np.asarray(values)
    shape = tuple(space.shape)
    if x.shape == shape and batch == 1:
        x = x[None]
    if x.shape != (batch, *shape):
        raise TokenizeError(
            f"{path}: shape {x.shape} does not match {space} (expected {shape} per value"
            + (f", {(batch, *shape)} for a batch of {batch})" if batch != 1 else ")")
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise TokenizeError(f"{path}: dtype {x.dtype} is not numeric for {space}")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise TokenizeError(f"{path}: contains NaN or infinite values")
        if integral and not np.array_equal(x, np.round(x)):
            raise TokenizeError(f"{path}: non-integer values for the discrete space {space}")
    return x


def check_bounds(space: spaces.Box, x: np.ndarray, path: str) -> None:
    """Raise if continuous values (B, *shape) lie outside the Box, past a tolerance of float32
    rounding: envs often emit float32 values a hair past float64 bounds."""
    batch = x.shape[0]
    lo = np.broadcast_to(space.low, space.shape)
    hi = np.broadcast_to(space.high, space.shape)
    # relative to each bound's own size: Box(0, 100)'s 100 rounds as coarsely as -100 does
    tol_lo = 1e-6 * np.maximum(1.0, np.abs(np.where(np.isfinite(lo), lo, 0)))
    tol_hi = 1e-6 * np.maximum(1.0, np.abs(np.where(np.isfinite(hi), hi, 0)))
    bad = (x < lo - tol_lo) | (x > hi + tol_hi)
    if bad.any():
        i = int(np.argmax(bad.reshape(batch, -1).any(0)))
        flat = x.reshape(batch, -1)[:, i]
        raise TokenizeError(
            f"{path}: value {flat[bad.reshape(batch, -1)[:, i]][0]:.6g} at flat index {i} is "
            f"outside [{lo.reshape(-1)[i]:.6g}, {hi.reshape(-1)[i]:.6g}] of {space}"
        )


def check_image_range(space: spaces.Box, x: np.ndarray, path: str) -> None:
    """Raise if pixels lie outside the image Box's bounds: casting them to uint8 would wrap
    them modulo 256 silently. uint8 pixels under the usual [0, 255] bounds need no check."""
    low, high = space.low, space.high
    if x.dtype == np.uint8 and (low == 0).all() and (high == 255).all():
        return
    bad = (x < low) | (x > high)
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), x.shape)[1:]  # index within one image
        v = x[(slice(None), *i)][bad[(slice(None), *i)]][0]
        raise TokenizeError(
            f"{path}: pixel value {v} at {tuple(map(int, i))} is outside "
            f"[{low[i]}, {high[i]}] of the image space {space}"
        )


# ---------------------------------------------------------------------------------------------
# Continuous values: mu-law and bins


def mu_law_encode(x: np.ndarray, mu: float = 100.0, M: float = 256.0) -> np.ndarray:
    """F(x) = sign(x) * log(|x| * mu + 1) / log(M * mu + 1), elementwise.

    >>> round(float(mu_law_encode(np.array(1.0))), 4)
    0.4547
    """
    return np.sign(x) * np.log1p(np.abs(x) * mu) / np.log1p(M * mu)


def mu_law_decode(y: np.ndarray, mu: float = 100.0, M: float = 256.0) -> np.ndarray:
    """Inverse of :func:`mu_law_encode`.

    >>> round(float(mu_law_decode(mu_law_encode(np.array(-3.0)))), 6)
    -3.0
    """
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(M * mu)) / mu


def to_bins(y: np.ndarray, num_bins: int) -> np.ndarray:
    """Companded values -> int64 bin indices in [0, num_bins): uniform bins over [-1, 1], values
    past the range saturate at the edge bins.

    >>> to_bins(np.array([-1.0, 0.0, 0.999, 5.0]), 4).tolist()
    [0, 2, 3, 3]
    """
    bins = np.clip(np.floor((np.clip(y, -1.0, 1.0) + 1.0) * (num_bins / 2.0)), 0, num_bins - 1)
    return bins.astype(np.int64)


def bin_centres(num_bins: int) -> np.ndarray:
    """float64[num_bins]: the companded value each bin decodes to, its centre.

    >>> bin_centres(4).tolist()
    [-0.75, -0.25, 0.25, 0.75]
    """
    return -1.0 + (np.arange(num_bins) + 0.5) * (2.0 / num_bins)


# ---------------------------------------------------------------------------------------------
# Discrete values


def discrete_base(space: spaces.Space, num_discrete: int, path: str) -> tuple[Any, Any]:
    """(offset subtracted from values, number of values) of a discrete leaf, so that tokens are
    always ``value - low`` in [0, n). Raises if the space needs more than ``num_discrete`` ids.

    >>> discrete_base(spaces.Discrete(3, start=-1), 1024, "action")
    (-1, 3)
    """
    if isinstance(space, spaces.Discrete):
        low, n = int(space.start), int(space.n)
    elif isinstance(space, spaces.MultiDiscrete):
        low, n = np.asarray(space.start).reshape(-1), np.asarray(space.nvec).reshape(-1)
    elif isinstance(space, spaces.MultiBinary):
        low, n = 0, 2
    elif isinstance(space, spaces.Box):
        lo = np.broadcast_to(space.low, space.shape).reshape(-1)
        hi = np.broadcast_to(space.high, space.shape).reshape(-1)
        if space.dtype == np.bool_:
            lo, hi = np.zeros(lo.shape, np.int64), np.ones(hi.shape, np.int64)
        # Count in float64 before any int64 arithmetic: integer Boxes given infinite bounds get
        # the dtype's limits, and int64 ``hi - lo + 1`` would wrap (negative counts, no error).
        span = hi.astype(np.float64) - lo.astype(np.float64) + 1
        if span.size and span.max() > num_discrete:
            j = int(np.argmax(span))
            raise _too_many(space, int(hi[j]) - int(lo[j]) + 1, num_discrete, path)
        lo, hi = lo.astype(np.int64), hi.astype(np.int64)
        low, n = lo, hi - lo + 1
    else:
        raise TokenizeError(f"{path}: {space} is not discrete")
    if np.max(n) > num_discrete:
        raise _too_many(space, int(np.max(n)), num_discrete, path)
    return low, n


def _too_many(space: spaces.Space, count: int, num_discrete: int, path: str) -> TokenizeError:
    return TokenizeError(
        f"{path}: {space} has {count} values but only {num_discrete} discrete tokens exist "
        "(TokenizerConfig.num_discrete); narrow the space's bounds or raise num_discrete"
    )


def discrete_encode(space: spaces.Space, x: np.ndarray, num_discrete: int, path: str) -> np.ndarray:
    """Whole-number values (B, *shape) of a discrete leaf -> int64 (B, n) in [0, count)."""
    low, n = discrete_base(space, num_discrete, path)
    v = x.astype(np.int64).reshape(x.shape[0], -1) - low  # (B, n)
    bad = (v < 0) | (v >= n)
    if bad.any():
        i = int(np.argmax(bad.reshape(-1)))
        raise TokenizeError(
            f"{path}: value {x.reshape(-1)[i]} at flat index {i % v.shape[1]} is outside {space}"
        )
    return v


def discrete_decode(
    space: spaces.Space, ids: np.ndarray, offset: int, num_discrete: int, path: str
) -> np.ndarray:
    """Token ids int64 (B, n) of a discrete leaf, whose values start at id ``offset`` -> the B
    values (B, *shape) in the space's dtype; TokenizeError for an id outside the leaf's range."""
    low, count = discrete_base(space, num_discrete, path)
    v = ids - offset
    if ((v < 0) | (v >= np.broadcast_to(count, (ids.shape[1],)).reshape(1, -1))).any():
        raise TokenizeError(f"{path}: ids {ids.tolist()} are outside the legal range of {space}")
    v = v + (np.asarray(low).reshape(1, -1) if np.ndim(low) else low)
    return v.reshape(ids.shape[0], *space.shape).astype(space.dtype)


# ---------------------------------------------------------------------------------------------
# Images


def pad_image(images: np.ndarray, patch: int = 16) -> np.ndarray:
    """(B, H, W, C) uint8 -> (B, H', W', 3): zero-padded at the bottom and right to multiples of
    ``patch`` (padding keeps every real pixel exact, unlike resizing); grayscale repeated to 3."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    B, H, W, _ = images.shape
    ph, pw = (-H) % patch, (-W) % patch
    if ph or pw:
        images = np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)))
    return images.astype(np.uint8, copy=False)


def image_patches(images: np.ndarray, patch: int = 16) -> tuple[np.ndarray, int, int]:
    """(B, H, W, C) images -> (uint8 (B, n_rows * n_cols, patch, patch, 3) patches in raster
    order, n_rows, n_cols), after :func:`pad_image`."""
    images = pad_image(images, patch)  # (B, H, W, 3)
    B, H, W, _ = images.shape
    nr, nc = H // patch, W // patch
    patches = (
        images.reshape(B, nr, patch, nc, patch, 3)
        .transpose(0, 1, 3, 2, 4, 5)
        .reshape(B, nr * nc, patch, patch, 3)
    )
    return patches, nr, nc


def patch_positions(n_rows: int, n_cols: int, vocab: int = 128) -> np.ndarray:
    """uint8[n_rows * n_cols, 4]: each patch's (row_lo, row_hi, col_lo, col_hi) normalised
    interval quantised to ``vocab`` bins, half-open, raster order (docs/method.md §1, images).

    >>> patch_positions(1, 2).tolist()
    [[0, 128, 0, 64], [0, 128, 64, 128]]
    """

    def intervals(n: int) -> np.ndarray:
        i = np.arange(n)
        lo = np.floor(i / n * vocab).astype(np.int64)
        hi = np.maximum(np.ceil((i + 1) / n * vocab).astype(np.int64), lo + 1)
        return np.stack([lo, np.minimum(hi, vocab)], 1)

    r, c = intervals(n_rows), intervals(n_cols)
    rows = np.repeat(r, n_cols, axis=0)
    cols = np.tile(c, (n_rows, 1))
    return np.concatenate([rows, cols], 1).astype(np.uint8)


def normalize_patches(patches: np.ndarray) -> np.ndarray:
    """uint8[P, p, p, 3] -> float32[P, 3, p, p]: pixels to [-1, 1], then divided by sqrt(16)=4."""
    x = patches.astype(np.float32) * (2.0 / 255.0) - 1.0
    return np.ascontiguousarray((x / 4.0).transpose(0, 3, 1, 2))
