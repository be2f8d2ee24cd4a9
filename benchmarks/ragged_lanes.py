"""A policy lane of many BabyAI envs whose missions differ in length: the lanes per length
(`ragged=False`) against one ragged lane, whole or a chunk of rows at a time (`chunk_tokens`).
Random weights, real BabyAI observations (8 levels, the envs' first observations, no prompt), a
window that fills after ~6 steps; each config runs in a fresh process, the configs interleaved
`repeats` times. Prints the median ms of a control step, the part in forward passes and the
forward passes a step.

    python benchmarks/ragged_lanes.py [envs] [preset] [threads] [repeats] [device]

On the 2-core CPU: `python benchmarks/ragged_lanes.py 640 gato-1m 2 3` (benchmarks/RESULTS.md,
"Ragged lanes"). On a GPU: `python benchmarks/ragged_lanes.py 640 gato-20m 4 3 cuda`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from opengato.bench_tables import machine

CONFIGS = [("lanes per length", False, 0), ("ragged, chunks of 4,096 tokens", True, 4096),
           ("ragged, chunks of 16,384 tokens", True, 16384),
           ("ragged, one forward", True, 1 << 30)]  # fmt: skip
LEVELS = ["GoToObj", "GoToLocal", "PickupLoc", "PutNextLocal", "GoToSeq", "Open", "GoToDoor",
          "ActionObjDoor"]  # fmt: skip


def one(envs: int, preset: str, threads: int, ragged: bool, chunk: int, device: str) -> dict:
    """Median ms of 10 control steps after 8 (the window full), in this process."""
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers BabyAI)
    import torch

    from opengato.agent.policy import GatoPolicy
    from opengato.model.gato import Gato
    from opengato.model.presets import make_config
    from opengato.suites import BabyAIObs
    from opengato.tokens.spaces import stack
    from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

    torch.set_num_threads(threads)
    tok = Tokenizer(TokenizerConfig())
    made = [BabyAIObs(gym.make(f"BabyAI-{LEVELS[i % len(LEVELS)]}-v0", disable_env_checker=True))
            for i in range(envs)]  # fmt: skip
    space, act_space = made[0].observation_space, made[0].action_space
    obs = stack(space, [e.reset(seed=i)[0] for i, e in enumerate(made)])
    torch.manual_seed(0)
    model = Gato(make_config(preset, tok.vocab_size, context_len=1024)).eval().to(device)
    policy = GatoPolicy(model, tok, space, act_space, envs, ragged=ragged,
                        chunk_tokens=chunk or None)  # fmt: skip
    forward = type(policy.net).next_logits.__get__(policy.net)
    spent, calls = [0.0], [0]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(*args):
        t = time.perf_counter()
        out = forward(*args)
        sync()
        spent[0] += time.perf_counter() - t
        calls[0] += 1
        return out

    policy.net.next_logits = timed
    policy.reset(None)
    for _ in range(8):
        policy.act(obs)
    steps, fwd = [], []
    calls[0] = 0
    for _ in range(10):
        spent[0] = 0.0
        t = time.perf_counter()
        policy.act(obs)
        steps.append(time.perf_counter() - t)
        fwd.append(spent[0])
    return {"step_ms": statistics.median(steps) * 1e3, "forward_ms": statistics.median(fwd) * 1e3,
            "forwards": calls[0] / 10}  # fmt: skip


def main(envs: int, preset: str, threads: int, repeats: int, device: str) -> None:
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in CONFIGS}
    for _ in range(repeats):
        for name, ragged, chunk in CONFIGS:
            args = [str(a) for a in (envs, preset, threads, ragged, chunk, device)]
            out = subprocess.run([sys.executable, __file__, "--one", *args], check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            print(name, runs[name][-1], file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"  # fmt: skip
    m = machine()
    print(f"- commit `{commit}`, {m['cpu']}, {m['cores']} cores, {m.get('gpu', device)}, torch "
          f"{m['torch']}\n- `python benchmarks/ragged_lanes.py {envs} {preset} {threads} "
          f"{repeats} {device}`\n")  # fmt: skip
    print(f"| {envs} BabyAI envs, {preset} | ms a step (each run) | of which forwards "
          f"(median) | forwards a step |\n| --- | --- | ---: | ---: |")  # fmt: skip
    for name, rs in runs.items():
        each = ", ".join(f"{r['step_ms']:.0f}" for r in rs)
        fwd = statistics.median(r["forward_ms"] for r in rs)
        print(f"| {name} | {each} | {fwd:.0f} | {rs[0]['forwards']:.1f} |")


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "--one":
        envs, preset, threads, ragged, chunk, device = a[1:]
        print(json.dumps(one(int(envs), preset, int(threads), ragged == "True", int(chunk),
                             device)))  # fmt: skip
    else:
        main(int(a[0]) if a else 640, a[1] if len(a) > 1 else "gato-1m",
             int(a[2]) if len(a) > 2 else 2, int(a[3]) if len(a) > 3 else 3,
             a[4] if len(a) > 4 else "cpu")  # fmt: skip
