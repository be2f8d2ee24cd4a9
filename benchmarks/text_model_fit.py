"""How many characters a text model packs into a token, on the text corpus's held-out and
training documents and held-out answers: a text model fitted to held-out text cuts it into
fewer, longer pieces than text it never read.

    python benchmarks/text_model_fit.py MODEL [MODEL ...] --data-dir ROOT

MODEL is a SentencePiece `.model` file, or a checkpoint folder (its `text.model`), or
`default` (the built-in text model of this code, trained on first use). Used to measure the
built-in model trained on every pydoc topic, held-out ones included, against the one trained on
the training documents alone (benchmarks/RESULTS.md, "The text model reads training text only").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from opengato.data.corpora import load_qa, load_text
from opengato.tokens.text import load_text_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--vocab-size", type=int, default=4096, help="of `default`")
    args = p.parse_args()
    groups = {
        "held-out documents": load_text(args.data_dir, "valid"),
        "held-out answers": [a for _, a in load_qa(args.data_dir, "valid")],
        "training documents": load_text(args.data_dir, "train"),
    }
    print("| text model | " + " | ".join(groups) + " |")
    print("| --- |" + " ---: |" * len(groups))
    for name in args.models:
        path = None if name == "default" else Path(name)
        if path is not None and path.is_dir():
            path = path / "text.model"
        sp = load_text_model(path and str(path), args.vocab_size)
        cells = []
        for texts in groups.values():
            chars, tokens = sum(map(len, texts)), sum(len(sp.encode(t)) for t in texts)
            cells.append(f"{chars / tokens:.3f} ({tokens:,})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("characters per token (tokens)")


if __name__ == "__main__":
    main()
