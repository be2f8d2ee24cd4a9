"""Train variants of the demo's training recipe from already-built token shards.

Used to choose the demo's default recipe (model preset, steps, context, mixture weights) on a
GPU in minutes, then evaluate each checkpoint with `opengato eval` on the CPU. Each variant is
the demo's training stage (`opengato.demo.stage_configs`) with the recipe it had before the
sweep (`BEFORE_SWEEP`) and the variant's changes. DATA is a data root as `opengato demo` left it
(Minari datasets, corpora and ``shards/``), copied with the files' times kept (`cp -a`, or
`tar --format=posix`): the shards' versions are checked against those times, so they are found
up to date and nothing is tokenised again:

    OPENGATO_CACHE=<folder holding the text/python-docs-4096-*.model the shards were made with> \\
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
from dataclasses import asdict, replace
from pathlib import Path

# The reference point: the demo's recipe before the sweep (gato-5m, 700 steps, no BabyAI or
# Meta-World weights), as changes to the demo's recipe now (the `1m-x2.5-bw` row, which is it).
BEFORE_SWEEP = dict(preset="gato-5m", steps=700, weights="text=0.1,qa=0.05,captions=0.1")
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


def train_config(name: str, data_dir: str | None, out: Path, device: str):
    """The TrainConfig of variant `name`: the demo's training stage on the default tasks, with
    BEFORE_SWEEP and the variant's changes, its run folder under `out/work/<name>`."""
    from opengato.demo import DemoConfig, stage_configs

    recipe = DemoConfig().train
    changes = {**BEFORE_SWEEP, **VARIANTS[name], "progress": False, "device": device}
    demo = DemoConfig(tasks="default", data_dir=data_dir, out_dir=str(out / "work" / name),
                      train=replace(recipe, **changes))  # fmt: skip
    return stage_configs(demo)[1]


def sweep(names: list[str], data_dir: str | None, out: Path, device: str, budget_s: float) -> None:
    """Train each variant in turn (until `budget_s` is spent), writing OUT/sweep.json after each."""
    from opengato.files import atomic_write_json
    from opengato.training.train import run_train

    t0, results = time.perf_counter(), {}
    for name in names:
        if time.perf_counter() - t0 > budget_s:
            results[name] = {"skipped": "budget spent"}
            continue
        cfg = train_config(name, data_dir, out, device)
        print(f"=== {name}: {cfg}", flush=True)
        try:
            s = run_train(cfg)
            pack(Path(s["checkpoint"]), out / f"{name}.tar")
            metrics = [json.loads(x) for x in (Path(cfg.out_dir) / "metrics.jsonl").open()]
            results[name] = {"config": asdict(cfg), "val": s["val"],
                             "tokens_per_s": s["tokens_per_s"], "wall_s": s["wall_s"],
                             "device": s["device"],
                             "val_curve": [m for m in metrics if "val/loss" in m]}  # fmt: skip
        except Exception:
            traceback.print_exc()
            results[name] = {"config": asdict(cfg), "error": traceback.format_exc()}
        atomic_write_json(out / "sweep.json", results)
        print(f"=== {name} done at {time.perf_counter() - t0:.0f} s", flush=True)


def pack(ckpt: Path, out: Path) -> None:
    """config.json, the text model and the weights in bf16 as one tar (half the size of the
    fp32 file)."""
    import torch
    from safetensors.torch import load_file, save

    from opengato.files import atomic_path

    weights = {k: v.to(torch.bfloat16) for k, v in load_file(ckpt / "model.safetensors").items()}
    blob = save(weights)
    with atomic_path(out) as tmp, tarfile.open(tmp, "w") as tar:
        tar.add(ckpt / "config.json", arcname="config.json")
        tar.add(ckpt / "text.model", arcname="text.model")
        info = tarfile.TarInfo("model.safetensors")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))


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

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sweep(args.variants.split(","), args.data_dir, out, args.device, args.budget_s)


if __name__ == "__main__":
    main()
