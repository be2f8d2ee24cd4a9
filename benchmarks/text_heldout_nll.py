"""A checkpoint's negative log-likelihood on the held-out Python documents (`text/python-docs`,
valid split): every token of every document scored once, in consecutive chunks of the
model's context (a chunk starts with no context of its own, the same for every model).

    python benchmarks/text_heldout_nll.py CHECKPOINT [CHECKPOINT ...] --data-dir ROOT

Unlike the training run's `val/text/loss`, which scores windows drawn by the running code's
sampler, this is one fixed set of tokens, so checkpoints trained by different versions of the
code compare on it. pydoc topics overlap, so some held-out documents hold paragraphs that a
training document holds word for word (most of `pydoc:specialnames`); the score is printed for
all held-out documents and for those that share no paragraph of 80 characters or more with the
training text.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from opengato.batches.batch import make_batch
from opengato.data.corpora import _norm, load_text  # the corpus's own whitespace rule
from opengato.model.checkpoint import load_model
from opengato.tokens.seq import TokenSeq, text_seq


def disjoint(docs: list[str], training: list[str], min_chars: int = 80) -> list[str]:
    """The documents of `docs` none of whose paragraphs (of `min_chars` or more) a training
    document holds word for word."""
    text = "\n".join(_norm(t) for t in training)

    def shared(doc: str) -> bool:
        paragraphs = (_norm(p) for p in doc.split("\n\n"))
        return any(len(p) >= min_chars and p in text for p in paragraphs)

    return [d for d in docs if not shared(d)]


def heldout_nll(model, tok, docs: list[str], batch_size: int = 16) -> tuple[float, int]:
    """(mean NLL per token in nats, tokens scored) of `docs`."""
    model.eval()
    L = model.cfg.context_len
    pieces = []
    for doc in docs:
        ids = tok.tokenize_text(doc).ids
        pieces += [text_seq(ids[a : a + L]) for a in range(0, len(ids), L)]
    # chunks of one length share a batch (all but each document's last are L long)
    by_len: dict[int, list[TokenSeq]] = {}
    for piece in pieces:
        by_len.setdefault(len(piece), []).append(piece)
    total, count = 0.0, 0
    with torch.no_grad():
        for same in by_len.values():
            for i in range(0, len(same), batch_size):
                part = same[i : i + batch_size]
                weights = np.stack([p.target_mask for p in part]).astype(np.float32)
                _, per_token = model(make_batch(part, weights), reduction="none")
                total += float(per_token.sum())
                count += int(weights.sum())
    return total / count, count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data-dir", required=True)
    args = p.parse_args()
    torch.set_num_threads(2)
    held_out = load_text(args.data_dir, "valid")
    apart = disjoint(held_out, load_text(args.data_dir, "train"))
    for ck in args.checkpoints:
        model, tok, _ = load_model(ck)
        nll, n = heldout_nll(model, tok, held_out)
        nll_apart, n_apart = heldout_nll(model, tok, apart)
        print(f"{ck}: held-out text NLL {nll:.4f} nats per token over {n:,} tokens "
              f"({len(held_out)} documents); {nll_apart:.4f} over the {n_apart:,} of the "
              f"{len(apart)} that share no paragraph with training text")  # fmt: skip


if __name__ == "__main__":
    main()
