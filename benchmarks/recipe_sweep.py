"""Train variants of the demo's training recipe from already-built token shards.

Used to choose the demo's default recipe (model preset, steps, context, mixture weights) on a
GPU in minutes, then evaluate each checkpoint with `opengato eval` on the CPU. The shards are
the ones `opengato demo` / `opengato train` wrote (``<data_dir>/shards``); they are used as they
are, without the Minari files they came from, so this runs on a machine that has only torch,
numpy, gymnasium, sentencepiece, safetensors, tensorboard and tqdm:

    OPENGATO_CACHE=<folder holding text/python-docs-4096-*.model> \\
    python benchmarks/recipe_sweep.py --data-dir DATA --out OUT --variants base,mw3,x4 --budget-s 420

Each variant's checkpoint is packed as ``OUT/<name>.tar`` (config.json + bf16 weights, small
enough to copy back); ``OUT/sweep.json`` holds each run's validation losses, tokens/s and wall
time. Unpack with ``python benchmarks/recipe_sweep.py --unpack OUT/<name>.tar --to DIR`` (weights
back to fp32) and evaluate with ``opengato eval DIR``.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
import traceback
from pathlib import Path

# The reference point: the demo's recipe before the sweep (gato-5m, 700 steps; the demo now uses
# the `1m-x2.5-bw` row, see opengato/demo.py), and the variants tried against it.
BASE = dict(preset="gato-5m", steps=700, batch_size=16, context_len=512, lr=1e-3, warmup_steps=50,
            dtype="bf16", dropout=0.0, weights="text=0.1,qa=0.05,captions=0.1")  # fmt: skip
MW3 = "metaworld=3,text=0.1,qa=0.05,captions=0.1"
BW = "babyai=2,metaworld=0.5,text=0.1,qa=0.05,captions=0.1"
VARIANTS: dict[str, dict] = {
    "smoke": dict(steps=4, warmup_steps=1),
    "base": {},
    "x2": dict(steps=1400),
    "x4": dict(steps=2800),
    "x16": dict(steps=11200),
    "mw3": dict(weights=MW3),
    "1m-x2.5": dict(preset="gato-1m", steps=1750),
    "ctx256": dict(context_len=256, batch_size=32),
    "lr2e-3": dict(lr=2e-3),
    "bs8": dict(batch_size=8, steps=1400),
    "smooth": dict(bin_init="smooth"),
    "smooth-bs8": dict(bin_init="smooth", batch_size=8, steps=1400),
    "smooth-x2": dict(bin_init="smooth", steps=1400),
    "seed1": dict(seed=1),
    "smooth-seed1": dict(bin_init="smooth", seed=1),
    "bw": dict(weights=BW),
    "bw-smooth": dict(weights=BW, bin_init="smooth"),
    "1m-x2.5-smooth": dict(preset="gato-1m", steps=1750, bin_init="smooth"),
    "1m-x2.5-bw": dict(preset="gato-1m", steps=1750, weights=BW),
}


def trust_existing_shards() -> None:
    """Use the shards on disk as they are (their Minari sources did not travel with them), as long
    as the tokenizer that wrote them is this one."""
    from opengato.batches import sequences
    from opengato.batches.shards import Shard, tokenizer_fingerprint

    def build_shards(sources, tokenizer, data_dir, cache_dir, log=print):
        shards = []
        for src in sources:
            shard = Shard(Path(cache_dir) / src.name.replace("/", "__"))
            want = tokenizer_fingerprint(tokenizer.config)
            if shard.meta["tokenizer"] != want:
                raise SystemExit(f"{shard.path}: tokenizer {shard.meta['tokenizer']} != {want}")
            shards.append(shard)
        return shards

    sequences.build_shards = build_shards


def pack(ckpt: Path, out: Path) -> None:
    """config.json, the text model and the weights in bf16 as one tar (half the size of the
    fp32 file)."""
    import torch
    from safetensors.torch import load_file, save

    weights = {k: v.to(torch.bfloat16) for k, v in load_file(ckpt / "model.safetensors").items()}
    blob = save(weights)
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        tar.add(ckpt / "config.json", arcname="config.json")
        tar.add(ckpt / "text.model", arcname="text.model")
        info = tarfile.TarInfo("model.safetensors")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    tmp.replace(out)


def unpack(tar_path: Path, to: Path) -> None:
    import torch
    from safetensors.torch import load, save_file

    to.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        (to / "config.json").write_bytes(tar.extractfile("config.json").read())
        (to / "text.model").write_bytes(tar.extractfile("text.model").read())
        weights = load(tar.extractfile("model.safetensors").read())
    save_file({k: v.to(torch.float32) for k, v in weights.items()}, to / "model.safetensors")
    print(f"unpacked {tar_path} -> {to}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--variants", default="base")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip variants once this is spent")
    p.add_argument("--device", default="auto")
    p.add_argument("--unpack")
    p.add_argument("--to")
    args = p.parse_args()
    if args.unpack:
        unpack(Path(args.unpack), Path(args.to))
        return

    from opengato.training.train import TrainConfig, run_train

    trust_existing_shards()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, results = time.perf_counter(), {}
    for name in args.variants.split(","):
        if time.perf_counter() - t0 > args.budget_s:
            results[name] = {"skipped": "budget spent"}
            continue
        cfg = {**BASE, **VARIANTS[name]}
        print(f"=== {name}: {cfg}", flush=True)
        try:
            s = run_train(TrainConfig(
                tasks="default", data_dir=args.data_dir, out_dir=str(out / "work" / name),
                eval_every=max(cfg["steps"] // 4, 1), save_every=0, progress=False,
                device=args.device, **cfg,
            ))  # fmt: skip
            pack(Path(s["checkpoint"]), out / f"{name}.tar")
            metrics = [json.loads(x) for x in (out / "work" / name / "metrics.jsonl").open()]
            results[name] = {"config": cfg, "val": s["val"], "tokens_per_s": s["tokens_per_s"],
                             "wall_s": s["wall_s"], "device": s["device"],
                             "val_curve": [m for m in metrics if "val/loss" in m]}  # fmt: skip
        except Exception:
            traceback.print_exc()
            results[name] = {"config": cfg, "error": traceback.format_exc()}
        (out / "sweep.json").write_text(json.dumps(results, indent=1))
        print(f"=== {name} done at {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
