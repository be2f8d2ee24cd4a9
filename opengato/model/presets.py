"""Named model shapes: Table C.1's three (gato-79m, gato-364m, gato-1.18b) and small ones that
train on two CPU cores, and the config of a preset for a vocabulary."""

from __future__ import annotations

from dataclasses import fields

from opengato.model.gato import GatoConfig

# Table C.1 shapes exactly (the big three), plus small shapes that train on two CPU cores.
# Names of the small ones are their rough parameter count at a vocabulary of ~5k tokens.
PRESETS: dict[str, dict] = {
    "gato-tiny": dict(n_layer=2, n_embd=64, n_head=4, d_ff=256, patch_channels=8),
    "gato-1m": dict(n_layer=4, n_embd=96, n_head=4, d_ff=384, patch_channels=8),
    "gato-5m": dict(n_layer=4, n_embd=256, n_head=8, d_ff=1024, patch_channels=16),
    "gato-20m": dict(n_layer=5, n_embd=512, n_head=8, d_ff=2048, patch_channels=32),
    "gato-79m": dict(n_layer=8, n_embd=768, n_head=24, d_ff=3072),
    "gato-364m": dict(n_layer=12, n_embd=1536, n_head=12, d_ff=6144),
    "gato-1.18b": dict(n_layer=24, n_embd=2048, n_head=16, d_ff=8192),
}


def check_preset(preset: str) -> None:
    """Raise ValueError naming the presets when `preset` is not one of them."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of: {', '.join(PRESETS)}")


def make_config(preset: str, vocab_size: int, **overrides) -> GatoConfig:
    """The config of a named preset for a vocabulary, with any field overridden."""
    check_preset(preset)
    known = {f.name for f in fields(GatoConfig)}
    if unknown := set(overrides) - known:
        raise ValueError(f"unknown GatoConfig field(s) {sorted(unknown)}")
    return GatoConfig(**{"name": preset, **PRESETS[preset], "vocab_size": vocab_size, **overrides})
