"""Checkpoints: a folder of ``model.safetensors`` + ``config.json`` + ``train_state.pt``.

``config.json`` holds everything needed to rebuild the model and tokenizer (and to reproduce the
run): the model config, the tokenizer config, the training config, the step, the opengato
version and the git commit. ``train_state.pt`` holds the optimizer, scheduler and RNG states for
an exact ``--resume``; it contains only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``.

A checkpoint is written to a temp folder beside its destination, then renamed into place, so a
crash mid-write leaves the previous checkpoint intact. In a run folder, ``latest.txt`` (also
replaced atomically) names the newest checkpoint folder; :func:`resolve_checkpoint` follows it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

FORMAT = "opengato-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE, CONFIG_FILE, STATE_FILE, LATEST_FILE = (
    "model.safetensors",
    "config.json",
    "train_state.pt",
    "latest.txt",
)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, foreign or does not fit the model."""


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("opengato")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain Gato inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    model_config: Any,
    tokenizer_config: Any,
    train_config: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int = 0,
    rng_state: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint folder at ``path`` atomically and point ``path.parent/latest.txt`` at it.

    ``model_config`` and ``tokenizer_config`` are dataclasses; ``train_config`` a JSON-able dict;
    ``rng_state`` a dict of tensors/plain values (e.g. ``{"torch": torch.get_rng_state()}``).
    Tied weights (the shared embedding/output matrix) are stored once."""
    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(_unwrap(model), str(tmp / MODEL_FILE))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "opengato_version": _version(),
        "git_commit": _git_commit(),
        "step": int(step),
        "model": asdict(model_config),
        "tokenizer": asdict(tokenizer_config),
        "train": train_config or {},
        **(extra or {}),
    }
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str))
    state = {"step": int(step), "rng": rng_state or {}}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    torch.save(state, tmp / STATE_FILE)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    _atomic_write_text(path.parent / LATEST_FILE, path.name + "\n")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder: ``path`` itself, or the one its ``latest.txt`` names (a run folder)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / LATEST_FILE).is_file():
        target = path / (path / LATEST_FILE).read_text().strip()
        if not (target / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path / LATEST_FILE} names {target}, which is not a checkpoint")
        return target
    raise CheckpointError(
        f"{path} is not an opengato checkpoint (no {CONFIG_FILE}) nor a run folder (no {LATEST_FILE})"
    )


def read_config(path: str | Path) -> dict:
    """The ``config.json`` of a checkpoint (folder or run folder), validated."""
    path = resolve_checkpoint(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON: {e}") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path / CONFIG_FILE} is not an opengato checkpoint config")
    for key in ("model", "tokenizer"):
        if key not in config:
            raise CheckpointError(f"{path / CONFIG_FILE} has no {key!r} section")
    if not (path / MODEL_FILE).is_file():
        raise CheckpointError(f"{path} has no {MODEL_FILE}")
    config["path"] = str(path)
    return config


def _dataclass_from(cls, d: dict):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


def load_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load a checkpoint's weights into ``model`` (raises CheckpointError on any mismatch)."""
    from safetensors.torch import load_model as st_load

    path = resolve_checkpoint(path)
    try:
        missing, unexpected = st_load(_unwrap(model), str(path / MODEL_FILE), strict=strict)
    except RuntimeError as e:  # shape mismatches, missing keys
        raise CheckpointError(f"{path}: the weights do not fit this model: {e}") from e
    except Exception as e:  # a foreign or truncated file
        raise CheckpointError(f"{path / MODEL_FILE} is not a readable safetensors file: {e}") from e


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """``(Gato in eval mode, Tokenizer, config dict)`` from a checkpoint or run folder."""
    from opengato.model import Gato, GatoConfig
    from opengato.tokenizer import Tokenizer, TokenizerConfig

    config = read_config(path)
    model_config = _dataclass_from(GatoConfig, config["model"])
    tokenizer = Tokenizer(_dataclass_from(TokenizerConfig, config["tokenizer"]))
    if tokenizer.vocab_size != model_config.vocab_size:
        raise CheckpointError(
            f"{config['path']}: tokenizer vocabulary {tokenizer.vocab_size} != model vocabulary "
            f"{model_config.vocab_size}"
        )
    model = Gato(model_config)
    load_weights(model, config["path"])
    return model.to(device).eval(), tokenizer, config


def check_compatible(config: dict, model_config: Any, tokenizer_config: Any) -> None:
    """Raise CheckpointError if a checkpoint's model/tokenizer differ in shape from these
    (dropout and other regularisation may differ: that is fine-tuning)."""
    shape_keys = ("vocab_size", "n_layer", "n_embd", "n_head", "d_ff", "ffn", "pos_encoding",
                  "max_obs_pos", "position_vocab", "patch_size", "image_channels",
                  "patch_channels", "bias")  # fmt: skip
    mine = asdict(model_config)
    diff = {
        k: (config["model"].get(k), mine[k])
        for k in shape_keys
        if k in mine and config["model"].get(k) != mine[k]
    }
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"checkpoint {config.get('path')} (preset {config['model'].get('name')!r}) does not "
            f"match this model (preset {mine.get('name')!r}): {detail}"
        )
    tok = asdict(tokenizer_config)
    tdiff = [k for k in tok if k in config["tokenizer"] and config["tokenizer"][k] != tok[k]]
    if tdiff:
        raise CheckpointError(
            f"checkpoint {config.get('path')} was trained with another tokenizer config "
            f"(differs in {', '.join(tdiff)}); pass the same tokenizer options"
        )


def load_train_state(path: str | Path) -> dict:
    """``{"step", "rng", "optimizer"?, "scheduler"?}`` of a checkpoint (weights_only load)."""
    path = resolve_checkpoint(path)
    file = path / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{path} has no {STATE_FILE}; it cannot be resumed (only --init)")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{file} is not a readable training state: {e}") from e
