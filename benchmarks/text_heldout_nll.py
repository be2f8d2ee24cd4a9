"""A checkpoint's negative log-likelihood on the held-out Python documents (`text/python-docs`,
valid split): every token of every document scored once, in consecutive chunks of the
model's context (a chunk starts with no context of its own, the same for every model, and its
first token, which nothing predicts, is not scored; before commit 0209b4f it was counted in the
per-token mean's denominator, 0.2% lower).

    python benchmarks/text_heldout_nll.py CHECKPOINT [CHECKPOINT ...] --data-dir ROOT

Unlike the training run's `val/text/loss`, which scores windows drawn by the running code's
sampler, this is one fixed set of tokens, so checkpoints trained by different versions of the
code compare on it; nats per character (the summed NLL over the documents' characters) also
compares checkpoints with different text models. A data root whose text corpus was built
before the held-out documents lost the paragraphs that training documents hold word for word
(pydoc topics overlap; most of `pydoc:specialnames` was training text) scores partly trained
text: build it again (`opengato collect --tasks text`) to compare with scores made since.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from opengato.batches.batch import make_batch
from opengato.data.corpora import load_text
from opengato.model.checkpoint import load_model
from opengato.tokens.seq import TokenSeq, text_seq


def heldout_nll(model, tok, docs: list[str], batch_size: int = 16) -> tuple[float, int, float]:
    """(mean NLL per token in nats, tokens scored, summed NLL per character of `docs`). A
    chunk's first token is not scored (it has no context), so the per-character figure leaves
    out a few tokens a document (one per chunk of `context_len`)."""
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
                weights[:, 0] = 0  # nothing predicts a chunk's first token: not counted either
                _, per_token = model(make_batch(part, weights), reduction="none")
                total += float(per_token.sum())
                count += int(weights.sum())
    return total / count, count, total / sum(len(doc) for doc in docs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data-dir", required=True)
    args = p.parse_args()
    torch.set_num_threads(2)
    held_out = load_text(args.data_dir, "valid")
    for ck in args.checkpoints:
        model, tok, _ = load_model(ck)
        nll, n, per_char = heldout_nll(model, tok, held_out)
        print(f"{ck}: held-out text NLL {nll:.4f} nats per token over {n:,} tokens, "
              f"{per_char:.4f} nats per character ({len(held_out)} documents)")  # fmt: skip


if __name__ == "__main__":
    main()
