"""Token kinds: the one enum the tokenizer writes and the model reads (docs/design.md).

A module of its own so that the model needs neither numpy-side tokenizer code nor gymnasium.
"""

from __future__ import annotations

from enum import IntEnum


class Kind(IntEnum):
    """The family of a token; stored as uint8 beside every token id."""

    TEXT = 0
    DISCRETE = 1
    CONTINUOUS = 2
    IMAGE = 3
    SEPARATOR = 4
    PAD = 5
