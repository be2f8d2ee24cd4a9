"""Where gato-79m's acting time goes at batch 1 (torch.profiler), for the next optimisation.

python benchmarks/profile_act.py [fp32|bf16]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from gymnasium import spaces
from torch.profiler import ProfilerActivity, profile

from opengato.model import Gato, make_config
from opengato.policy import GatoPolicy
from opengato.tokenizer import Tokenizer


def main(dtype: str = "bf16", steps: int = 10) -> None:
    torch.manual_seed(0)
    tok = Tokenizer()
    model = Gato(make_config("gato-79m", tok.vocab_size, context_len=1024))
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    obs_space = spaces.Box(-np.inf, np.inf, (39,), np.float64)
    act_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    rng = np.random.default_rng(0)
    n = 1024 // 44 + 2
    prompt = tok.tokenize_episode(obs_space, act_space, rng.uniform(-1, 1, (n, 39)),
                                  rng.uniform(-1, 1, (n, 4)).astype(np.float32))  # fmt: skip
    policy = GatoPolicy(model, tok, obs_space, act_space, num_envs=1)
    policy.reset(prompt)
    policy.act(rng.uniform(-1, 1, (1, 39)))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            policy.act(rng.uniform(-1, 1, (1, 39)))
        dt = time.perf_counter() - t0
    print(f"gato-79m {dtype}, batch 1, window full: {steps / dt:.1f} control steps/s "
          f"(under the profiler), torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["bf16"]))
