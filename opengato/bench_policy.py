"""The policy `opengato bench` times acting with, shared by the acting scripts in benchmarks/:
a random-init Gato on a Meta-World-shaped task (44 tokens a step) whose window starts full."""

from __future__ import annotations

import numpy as np


def metaworld_shaped_policy(
    preset: str, dtype: str, batch: int, context_len: int, use_cache: bool = True,
    weights: str = "packed", device: str = "cpu",
):  # fmt: skip
    """A random-init `preset` GatoPolicy for a Meta-World-shaped task (Box(39) observations,
    Box(4) actions in [-1, 1]) whose window is already full; returns (policy, rng). `weights`:
    packed, plain, compiled or int8 (which runs with fp32 activations whatever `dtype`)."""
    import torch
    from gymnasium import spaces

    from opengato.agent.policy import GatoPolicy
    from opengato.model.gato import Gato
    from opengato.model.presets import make_config
    from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

    torch.manual_seed(0)
    tok = Tokenizer(TokenizerConfig())
    model = Gato(make_config(preset, tok.vocab_size, context_len=context_len))
    if weights == "int8":
        from opengato.model.quantize import quantize_int8

        model = quantize_int8(model)
    elif dtype == "bf16":
        model = model.to(torch.bfloat16)
    model = model.to(device)
    obs_space = spaces.Box(-np.inf, np.inf, (39,), np.float64)  # as Meta-World's
    act_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    rng = np.random.default_rng(0)
    n_prompt = context_len // 44 + 2  # more timesteps than the window holds: it starts full
    prompt = tok.tokenize_episode(
        obs_space, act_space,
        rng.uniform(-1, 1, (n_prompt, 39)), rng.uniform(-1, 1, (n_prompt, 4)).astype(np.float32),
    )  # fmt: skip
    policy = GatoPolicy(model, tok, obs_space, act_space, num_envs=batch, use_cache=use_cache,
                        packed=weights == "packed", compile=weights == "compiled")  # fmt: skip
    policy.reset(prompt)
    return policy, rng
