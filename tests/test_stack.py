"""SeqStack (tokens/stack.py) is a list of equal-length TokenSeqs stacked: every operation must
give what the same operation on the list gives, image patches included."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from opengato.batches.batch import make_batch
from opengato.kinds import Kind
from opengato.tokens.seq import TokenSeq, flatten_rows, tail
from opengato.tokens.stack import SeqStack
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

SPACE = spaces.Dict(
    {"image": spaces.Box(0, 255, (32, 32, 3), np.uint8), "x": spaces.Box(-1, 1, (3,), np.float32)}
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(TokenizerConfig())


def observations(tok: Tokenizer, n: int, seed: int) -> tuple[list[TokenSeq], list]:
    rng = np.random.default_rng(seed)
    obs = {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
           "x": rng.uniform(-1, 1, (n, 3)).astype(np.float32)}  # fmt: skip
    return tok.tokenize_observations(SPACE, obs, n), tok.observation_rows(SPACE, obs, n)


def same(a: TokenSeq, b: TokenSeq) -> None:
    for f in ("ids", "kind", "obs_pos", "target_mask", "timestep_starts", "patches", "patch_pos"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def test_from_rows_is_of_flattened_rows(tok):
    seqs, rows = observations(tok, 4, 0)
    assert len(rows) == 1 and len(seqs[0].patches) == 4  # 32x32 image: 4 patches of 16
    for a, b in zip(SeqStack.from_rows(rows[0]).seqs(), SeqStack.of(seqs).seqs(), strict=True):
        same(a, b)
    for a, b in zip(SeqStack.of(seqs).seqs(), seqs, strict=True):
        same(a, b)


def test_append_select_and_batch_match_the_list(tok):
    first, _ = observations(tok, 3, 1)
    second, _ = observations(tok, 3, 2)
    action = SeqStack.column(np.array([7, 8, 9]), Kind.DISCRETE)
    stack = SeqStack.of(first).append(action).append(SeqStack.of(second))
    listed = [
        TokenSeq.concat([a, s, b]) for a, s, b in zip(first, action.seqs(), second, strict=True)
    ]
    for a, b in zip(stack.seqs(), listed, strict=True):
        same(a, b)  # each row's patches stay with its row, in stream order
    rows = [2, 0]
    for a, b in zip(stack.select(rows).seqs(), [listed[r] for r in rows], strict=True):
        same(a, b)
    x, y = make_batch(stack), make_batch(listed)
    for f in ("ids", "kind", "obs_pos", "patches", "patch_index", "patch_pos"):
        assert getattr(x, f).equal(getattr(y, f)), f


def test_action_column_is_a_target_outside_observations():
    col = SeqStack.column(np.array([5, 6]), Kind.CONTINUOUS)
    assert col.ids.shape == (2, 1) and col.target_mask.all() and (col.obs_pos == -1).all()
    assert len(SeqStack.empty(2).append(col)) == 1


def test_unequal_lengths_are_refused(tok):
    a = flatten_rows(observations(tok, 1, 3)[1])
    b = TokenSeq.concat([a, SeqStack.column(np.array([1]), Kind.DISCRETE).seqs()[0]])
    with pytest.raises(ValueError, match="equal lengths"):
        SeqStack.of([a, b])
    with pytest.raises(ValueError, match="cannot append 1 rows to 2"):
        SeqStack.empty(2).append(SeqStack.column(np.array([1]), Kind.DISCRETE))


def test_padded_rows_keep_their_tokens_after_their_pads(tok):
    # Rows of different lengths (images included), appended to and from one another: each row is
    # its pads, then exactly the list's tokens and patches; the pads are never targets.
    first, _ = observations(tok, 3, 4)
    action = SeqStack.column(np.array([7, 8, 9]), Kind.DISCRETE)
    short = [tail(s, k) for s, k in zip(first, (len(first[0]), 5, 2), strict=True)]
    second, _ = observations(tok, 3, 5)
    uneven = [second[0], tail(second[1], 3), second[2]]
    stack = SeqStack.padded(short).append(action).append(SeqStack.padded(uneven))
    listed = [TokenSeq.concat(p) for p in zip(short, action.seqs(), uneven, strict=True)]
    assert stack.lead.tolist() == [len(stack) - len(s) for s in listed] and stack.lead[0] == 0
    for a, b in zip(stack.seqs(), listed, strict=True):
        same(a, b)
    for r in range(3):
        pads = slice(0, stack.lead[r])
        assert (stack.kind[r, pads] == Kind.PAD).all() and not stack.target_mask[r, pads].any()
    for a, b in zip(stack.select([2, 1]).seqs(), [listed[2], listed[1]], strict=True):
        same(a, b)
    assert SeqStack.padded(first).lead is None  # equal lengths: no pads
    rows = stack.select([1, 2])  # both start with pads: unpadded drops the shared ones
    cut = rows.unpadded()
    assert len(cut) == len(rows) - min(rows.lead) and min(cut.lead) == 0
    for a, b in zip(cut.seqs(), rows.seqs(), strict=True):
        same(a, b)


def test_merged_stacks_are_the_padded_rows(tok):
    """Stacks of observations of two lengths (a text leaf's), their rows interleaved: `merged`
    gives what `padded` gives over the rows' TokenSeqs in that order, patches included."""
    space = spaces.Dict({"mission": spaces.Text(20, min_length=0, charset="abcdefgh "),
                         "image": spaces.Box(0, 255, (32, 16, 3), np.uint8)})  # fmt: skip
    rng = np.random.default_rng(3)
    missions = ["abc", "abc abc", "abc", "abc abc", "abc"]
    obs = {"mission": missions, "image": rng.integers(0, 256, (5, 32, 16, 3), dtype=np.uint8)}
    seqs = tok.tokenize_observations(space, obs, 5)
    groups = tok.observation_groups(space, obs, 5)
    assert sorted(len(rows) for rows, _ in groups) == [2, 3]  # two lengths
    merged = SeqStack.merged([(SeqStack.from_rows(laid), rows) for rows, laid in groups])
    want = SeqStack.padded(seqs)
    for f in ("ids", "kind", "obs_pos", "target_mask", "starts", "patches", "patch_pos", "lead"):
        np.testing.assert_array_equal(getattr(merged, f), getattr(want, f), err_msg=f)
    for a, b in zip(merged.seqs(), seqs, strict=True):
        same(a, b)


def test_column_of_some_rows_pads_the_others():
    """A column with per-row kinds, present in some rows: the others hold a pad (`lead`), so
    appended to a stack they add nothing to their rows."""
    col = SeqStack.column(np.array([5, 6, 7]), np.array([Kind.DISCRETE, Kind.CONTINUOUS, 0]),
                          present=np.array([True, True, False]))  # fmt: skip
    assert col.lead.tolist() == [0, 0, 1] and col.target_mask[:, 0].tolist() == [True, True, False]
    seqs = col.seqs()
    assert [s.ids.tolist() for s in seqs] == [[5], [6], []]
    assert [s.kind.tolist() for s in seqs[:2]] == [[Kind.DISCRETE], [Kind.CONTINUOUS]]
