"""Checkpoints: a folder of ``model.safetensors`` + ``config.json`` + ``text.model`` +
``train_state.pt``.

``config.json`` holds everything needed to rebuild the model and tokenizer (and to reproduce the
run): the model config, the tokenizer config, the sha256 of the text model, the training config,
the step, the opengato version and the git commit. ``text.model`` is the SentencePiece model the
tokenizer read, so a checkpoint reads text with the same ids on any machine (the built-in default
model is trained on the running Python's docs, which differ between releases); loading verifies
it against the recorded sha256. ``train_state.pt`` holds the step and the optimizer and scheduler
states for an exact ``--resume`` (read by ``opengato.training.resume``); it contains only tensors
and plain Python values, so it loads with ``torch.load(weights_only=True)``. It holds no RNG
state: training seeds the data and torch's generator of every step from (seed, rank, step), so
a resume needs none (older checkpoints carry an unused ``"rng"`` entry, which loads and is
ignored).

A checkpoint is written to a temp folder beside its destination, then renamed into place, so a
crash mid-write leaves the previous checkpoint intact. In a run folder, ``latest.txt`` (also
replaced atomically) names the newest checkpoint folder; :func:`resolve_checkpoint` follows it.
What a crash can leave behind (``.NAME.tmp-PID``, ``.NAME.old-PID``) :func:`clean_leftovers`
removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

from opengato.files import atomic_path, atomic_write_text, file_sha256, git_commit

FORMAT = "opengato-checkpoint"
FORMAT_VERSION = 2  # 2: the text model travels inside (text.model, its sha256 in config.json)
MODEL_FILE, CONFIG_FILE, STATE_FILE, LATEST_FILE, TEXT_MODEL_FILE = (
    "model.safetensors",
    "config.json",
    "train_state.pt",
    "latest.txt",
    "text.model",
)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, foreign or does not fit the model."""


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


def _text_model_bytes(tokenizer_config: Any, text_model: bytes | str | Path | None) -> bytes:
    if isinstance(text_model, bytes):
        return text_model
    if text_model is None:
        from opengato.tokens.text import text_model_file

        text_model = text_model_file(tokenizer_config.text_model, tokenizer_config.text_vocab_size)
    return Path(text_model).read_bytes()


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    model_config: Any,
    tokenizer_config: Any,
    train_config: dict | None = None,
    optimizer: torch.optim.Optimizer | dict | None = None,
    scheduler: Any = None,
    step: int = 0,
    extra: dict | None = None,
    text_model: bytes | str | Path | None = None,
) -> Path:
    """Write a checkpoint folder at ``path`` atomically and point ``path.parent/latest.txt`` at it.

    ``model_config`` and ``tokenizer_config`` are dataclasses; ``train_config`` a JSON-able dict.
    ``text_model``: the SentencePiece model the tokenizer read (its bytes or file; default: the
    file ``tokenizer_config`` names), copied in as ``text.model``. Tied weights (the shared
    embedding/output matrix) are stored once. ``optimizer``: the optimizer or its state dict
    (one gathered from shards, opengato.training.sharding)."""
    from safetensors.torch import save_model

    path = Path(path)
    text_bytes = _text_model_bytes(tokenizer_config, text_model)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_model(_unwrap(model), str(tmp / MODEL_FILE))
        (tmp / TEXT_MODEL_FILE).write_bytes(text_bytes)
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "opengato_version": _version(),
            "git_commit": git_commit(),
            "step": int(step),
            "model": asdict(model_config),
            "tokenizer": asdict(tokenizer_config),
            "text_model": {
                "file": TEXT_MODEL_FILE,
                "sha256": hashlib.sha256(text_bytes).hexdigest(),
            },
            "train": train_config or {},
            **(extra or {}),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str))
        state = {"step": int(step)}  # no RNG state: every step is seeded (module docstring)
        if optimizer is not None:
            state["optimizer"] = (
                optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
            )
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        torch.save(state, tmp / STATE_FILE)
    atomic_write_text(path.parent / LATEST_FILE, path.name + "\n")
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


def text_model_path(config: dict) -> Path:
    """The text model file to read a checkpoint's text with (``config`` from :func:`read_config`):
    its own ``text.model``, verified against the sha256 in ``config.json``.

    Raises CheckpointError if that file was changed, or if it is missing and the text model this
    machine's tokenizer config names is not the same one (same sha256: then that one is used).
    A checkpoint from before text models travelled (format 1) gets this machine's, with a warning.
    """
    from opengato.tokens.text import text_model_file

    folder = Path(config["path"])
    record = config.get("text_model")
    tok = config["tokenizer"]
    if record is None:
        local = text_model_file(tok.get("text_model"), tok["text_vocab_size"])
        warnings.warn(
            f"{folder} predates checkpoints carrying their text model: reading its text with "
            f"{local}, which may not be the one it was trained with",
            stacklevel=2,
        )
        return local
    want = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(want, str):
        raise CheckpointError(f"{folder / CONFIG_FILE}: 'text_model' has no sha256")
    file = folder / record.get("file", TEXT_MODEL_FILE)
    if file.is_file():
        have = file_sha256(file)
        if have != want:
            raise CheckpointError(
                f"{file} is not the text model this checkpoint was saved with (sha256 {have[:16]}, "
                f"{CONFIG_FILE} records {want[:16]}): the file was changed or damaged; restore "
                f"it from the original checkpoint"
            )
        return file
    try:
        local = text_model_file(tok.get("text_model"), tok["text_vocab_size"])
        have = file_sha256(local)
    except FileNotFoundError as e:
        local, have = None, f"none ({e})"
    if have != want:
        raise CheckpointError(
            f"{folder} has no {TEXT_MODEL_FILE} (the SentencePiece model it was trained with, "
            f"sha256 {want[:16]}) and this machine's text model ({local}, sha256 {have[:16]}) is "
            f"not the same one: copy the whole checkpoint folder, {TEXT_MODEL_FILE} included"
        )
    return local


def load_tokenizer(path: str | Path | dict):
    """The Tokenizer a checkpoint (folder, run folder, or its :func:`read_config` dict) was
    trained with, reading text with the checkpoint's own text model (:func:`text_model_path`).

    Its ``config`` is the recorded TokenizerConfig as is (``text_model`` keeps the recorded value,
    None for the built-in default); only the SentencePiece model comes from the checkpoint."""
    from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

    config = path if isinstance(path, dict) else read_config(path)
    recorded = _dataclass_from(TokenizerConfig, config["tokenizer"])
    tokenizer = Tokenizer(replace(recorded, text_model=str(text_model_path(config))))
    tokenizer.config = recorded
    return tokenizer


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """``(Gato in eval mode, Tokenizer, config dict)`` from a checkpoint or run folder; the
    tokenizer reads text with the checkpoint's own text model (:func:`load_tokenizer`)."""
    from opengato.model.gato import Gato, GatoConfig

    config = read_config(path)
    model_config = _dataclass_from(GatoConfig, config["model"])
    tokenizer = load_tokenizer(config)
    if tokenizer.vocab_size != model_config.vocab_size:
        raise CheckpointError(
            f"{config['path']}: tokenizer vocabulary {tokenizer.vocab_size} != model vocabulary "
            f"{model_config.vocab_size}"
        )
    model = Gato(model_config)
    load_weights(model, config["path"])
    return model.to(device).eval(), tokenizer, config


def check_compatible(
    config: dict, model_config: Any, tokenizer_config: Any, text_model: bytes | None = None
) -> None:
    """Raise CheckpointError if a checkpoint's model/tokenizer differ in shape from these
    (dropout and other regularisation may differ: that is fine-tuning). The text model is
    compared by content (see :func:`check_tokenizer`)."""
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
    check_tokenizer(config, tokenizer_config, text_model)


def check_tokenizer(config: dict, tokenizer_config: Any, text_model: bytes | None = None) -> None:
    """Raise CheckpointError unless this tokenizer config reads and writes the same tokens as the
    checkpoint's: the same settings, and a text model with the same bytes (``text_model``: this
    run's, default the file ``tokenizer_config`` names), wherever its file lives."""
    from opengato.tokens.text import text_model_file

    record = config.get("text_model")
    tok = asdict(tokenizer_config)
    by_content = isinstance(record, dict) and "sha256" in record  # else format 1: compare paths
    tdiff = [k for k in tok if k in config["tokenizer"] and config["tokenizer"][k] != tok[k]
             and not (by_content and k == "text_model")]  # fmt: skip
    if tdiff:
        detail = ", ".join(f"{k}: checkpoint {config['tokenizer'][k]!r} vs run {tok[k]!r}"
                           for k in tdiff)  # fmt: skip
        raise CheckpointError(
            f"checkpoint {config.get('path')} was trained with another tokenizer config "
            f"({detail}); pass the same tokenizer options"
        )
    if not by_content:
        return
    if text_model is None:
        file = text_model_file(tokenizer_config.text_model, tokenizer_config.text_vocab_size)
        text_model = file.read_bytes()
    else:
        file = "this run's"
    have = hashlib.sha256(text_model).hexdigest()
    if have != record["sha256"]:
        own = Path(config["path"]) / record.get("file", TEXT_MODEL_FILE)
        raise CheckpointError(
            f"checkpoint {config.get('path')} was trained with another text model: its "
            f"{TEXT_MODEL_FILE} has sha256 {record['sha256'][:16]}, this run's ({file}) "
            f"{have[:16]}, so the same text would become other token ids. To use the "
            f"checkpoint's own, copy {own} outside the run folder and pass "
            f"--tokenizer.text-model COPY"
        )


# ---------------------------------------------------------------------------------------------
# run folders

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a name this module writes: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_leftovers(folder: str | Path) -> list[Path]:
    """Remove what an interrupted write left in ``folder`` (a run folder) and return it.

    Writes here go through ``.NAME.tmp-PID`` (a checkpoint folder or a file being written) and
    ``.NAME.old-PID`` (the previous NAME, moved aside while its replacement is renamed in). Those
    of this process or of a process no longer running are leftovers: a ``.tmp`` is deleted; an
    ``.old`` is put back as NAME if NAME is missing (the crash came between the two renames),
    else deleted. Call it before anything in ``folder`` is written or resolved."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    cleaned = []
    for p in sorted(folder.iterdir()):
        m = _LEFTOVER.match(p.name)
        if not m:
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and _pid_alive(pid):
            continue  # another process may be writing it right now
        target = folder / m["name"]
        if m["kind"] == "old" and not target.exists():
            os.replace(p, target)
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        cleaned.append(p)
    return cleaned


def load_agent(checkpoint: str, device: str = "cpu", seed: int = 0, int8: bool = False):
    """`(model, tokenizer, config)` for a checkpoint, `random:<preset>` (seeded random init with
    the default tokenizer), or `(None, None, {})` for `uniform`. `int8`: the model's block
    matmuls in int8 (model/quantize.py; CPU only, opt-in)."""
    if int8:
        from opengato.model.quantize import quantize_int8

        model, tokenizer, config = load_agent(checkpoint, device, seed)
        return (None if model is None else quantize_int8(model)), tokenizer, config
    if checkpoint == "uniform":
        return None, None, {}
    if checkpoint.startswith("random:"):
        import torch

        from opengato.model.gato import Gato
        from opengato.model.presets import make_config
        from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

        preset = checkpoint.split(":", 1)[1]
        tokenizer = Tokenizer(TokenizerConfig())
        cfg = make_config(preset, tokenizer.vocab_size)
        with torch.random.fork_rng(devices=[]):  # seeded, leaving the caller's generator alone
            torch.manual_seed(seed)
            model = Gato(cfg)
        model = model.to(device).eval()
        return model, tokenizer, {"model": asdict(cfg), "tokenizer": asdict(tokenizer.config)}
    return load_model(checkpoint, device)


def checkpoint_hash(checkpoint: str) -> str | None:
    """sha256 of the checkpoint's model.safetensors (None for the baselines)."""
    if checkpoint == "uniform" or checkpoint.startswith("random:"):
        return None
    return file_sha256(resolve_checkpoint(checkpoint) / MODEL_FILE)
