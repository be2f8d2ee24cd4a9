"""How much of a text shard training windows reach: the share of the training split's target
tokens that can ever be a target, and that are targets at least once in a run's worth of windows.

    python benchmarks/text_coverage.py SHARD_DIR [--context-len 512] [--windows 20000]

SHARD_DIR is a shard folder of a data root (``$OPENGATO_DATA/shards/text__python-docs``). The
windows come from ``WindowSampler`` itself (the training split, packed, as training draws
them), so running it against two versions of the code compares them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from opengato.batches.shards import Shard
from opengato.batches.windows import Split, WindowSampler
from opengato.kinds import Kind


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shard", type=Path)
    p.add_argument("--context-len", type=int, default=512)
    p.add_argument("--windows", type=int, default=20000)
    args = p.parse_args()
    shard = Shard(args.shard)
    sampler = WindowSampler(shard, args.context_len, Split("train"), pack=True)
    a, b = int(shard.episode_starts[sampler.e0]), int(shard.episode_starts[sampler.e1])
    targets = np.asarray(shard.target_mask[a:b], bool)
    seen = np.zeros(b - a, np.int64)
    rng = np.random.default_rng(0)
    for _ in range(args.windows):
        w = sampler.sample(rng)
        n = (w.packed_at if w.packed_at >= 0 else int((w.kind != Kind.PAD).sum())) - w.prompt_len
        seen[w.start - a : w.start - a + n] += 1  # the sequence proper, not what packs it
    docs = np.diff(shard.episode_starts[sampler.e0 : sampler.e1 + 1])
    print(f"{shard.name}: {sampler.e1 - sampler.e0} training documents, {b - a:,} tokens "
          f"({targets.sum():,} targets); document length median {int(np.median(docs))}, "
          f"max {int(docs.max())}; context {args.context_len}")  # fmt: skip
    hit = seen[targets] > 0
    print(f"{args.windows:,} windows: {hit.mean():.1%} of the target tokens a target at least "
          f"once; visits per target token: mean {seen[targets].mean():.2f}, "
          f"max {seen[targets].max()}")  # fmt: skip


if __name__ == "__main__":
    main()
