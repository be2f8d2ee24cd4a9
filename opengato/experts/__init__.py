"""Demonstrators, one small module per suite. Each exposes classes with `reset()` and
`act(obs) -> action`, built from the env they act in (`Expert(env)`); experts know no model."""
