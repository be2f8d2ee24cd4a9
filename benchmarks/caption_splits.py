"""Attribute accuracy of a checkpoint's captions on each split of the generated scenes.

`opengato eval --captions` scores only the held-out scenes (the `test` split, whose colour-shape
pairs never appear in training). This prints the same scores (`language.evaluate_captions`) on
the `train` and `valid` splits beside it, so that the gap between scenes like those trained on
and new combinations shows:

    python benchmarks/caption_splits.py runs/x/train --data-dir ~/.opengato/data --limit 150

benchmarks/RESULTS.md ("Captions: the cap and more scenes") has its output for two runs.
"""

from __future__ import annotations

import argparse
import json

from opengato.agent.language import CAPTION_MAX_TOKENS, evaluate_captions
from opengato.model.checkpoint import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint folder or run folder")
    p.add_argument("--data-dir", default=None, help="data root holding vision/scenes")
    p.add_argument("--limit", type=int, default=150, help="scenes captioned per split")
    p.add_argument("--max-tokens", type=int, default=CAPTION_MAX_TOKENS)
    args = p.parse_args()
    model, tokenizer, _ = load_model(args.checkpoint)
    for split in ("train", "valid", "test"):
        res = evaluate_captions(model, tokenizer, args.data_dir, args.limit, args.max_tokens, split)
        if "error" in res:
            raise SystemExit(res["error"])
        acc = {k: round(v, 3) for k, v in res["attributes"].items()}
        print(json.dumps({"split": split, "n": res["n"], **acc}), flush=True)


if __name__ == "__main__":
    main()
