"""The Gato transformer (config, presets, KV cache) and its self-contained checkpoints."""
