"""Attribute accuracy of a checkpoint's captions on each split of the generated scenes.

`opengato eval --captions` scores only the held-out scenes (the `test` split, whose colour-shape
pairs never appear in training). This prints the same scores on the `train` and `valid` splits
beside it, so that the gap between scenes like those trained on and new combinations shows:

    python benchmarks/caption_splits.py runs/x/train --data-dir ~/.opengato/data --limit 150

benchmarks/RESULTS.md ("Captions: the cap and more scenes") has its output for two runs.
"""

from __future__ import annotations

import argparse
import json

import torch

from opengato.agent.generation import generate_texts
from opengato.agent.language import (
    CAPTION_BATCH,
    CAPTION_MAX_TOKENS,
    attribute_accuracy,
    image_tokens,
)
from opengato.data.corpora import load_captions
from opengato.model.checkpoint import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint folder or run folder")
    p.add_argument("--data-dir", default=None, help="data root holding vision/scenes")
    p.add_argument("--limit", type=int, default=150, help="scenes captioned per split")
    p.add_argument("--max-tokens", type=int, default=CAPTION_MAX_TOKENS)
    args = p.parse_args()
    model, tokenizer, _ = load_model(args.checkpoint)
    model.eval()
    out = {}
    for split in ("train", "valid", "test"):
        items = load_captions(args.data_dir, split, "scenes")[: args.limit]
        prefixes = [image_tokens(tokenizer, image) for image, _, _ in items]
        with torch.no_grad():
            hyps = generate_texts(
                model, tokenizer, prefixes, args.max_tokens, batch_size=CAPTION_BATCH
            )
        acc = attribute_accuracy([h.strip() for h in hyps], [attrs for _, _, attrs in items])
        out[split] = {"n": len(items), **{k: round(v, 3) for k, v in acc.items()}}
        print(json.dumps({"split": split, **out[split]}), flush=True)


if __name__ == "__main__":
    main()
