"""`opengato bench`: how fast opengato trains and acts on this machine, and how much memory.

    opengato bench                                  # everything, ~15 min on 2 CPU cores
    opengato bench --what act --act-batch-sizes 1   # one part

Four measurements, each case in a fresh process so that its peak memory (max RSS) is its own:

1. `gemm`   the machine's matmul peak: the best of several large fp32 and bf16 GEMMs (GFLOP/s),
            so that model FLOPs utilisation is a ratio that holds on any machine.
2. `train`  forward + backward + AdamW step on batches from the real default mixture: tokens/s
            and MFU = 6 x non-embedding parameters x tokens/s / peak of the compute dtype
            (attention's own FLOPs are left out, as in the usual MFU definition).
3. `act`    control steps/s of GatoPolicy on a Meta-World-shaped task (39 continuous observation
            values + separator + 4 action values = 44 tokens a step), window already full at
            context_len tokens, with and without the KV cache, for each batch size.
4. `data`   batches/s the data pipeline (Mixture.sample_batch) delivers at the training batch
            shape, against the steps/s training consumes: the headroom.

Results go to a JSON file and a Markdown file (commit, machine, command, tables); the committed
copy is benchmarks/RESULTS.md. Nothing here is a pass/fail test: targets are discussed there.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np

from opengato.files import atomic_write_json, atomic_write_text, git_commit

Part = Literal["gemm", "train", "act", "data"]


@dataclass
class BenchConfig:
    """Benchmark training throughput/MFU, acting speed, data-pipeline headroom, peak memory."""

    what: tuple[Part, ...] = ("gemm", "train", "act", "data")
    """Which measurements to run."""
    train_presets: tuple[str, ...] = ("gato-tiny", "gato-1m", "gato-5m", "gato-20m", "gato-79m")
    """Presets whose training throughput is measured."""
    dtypes: tuple[Literal["fp32", "bf16"], ...] = ("fp32", "bf16")
    """Compute dtypes for training (bf16: autocast, fp32 master weights) and acting."""
    context_len: int = 1024
    """Tokens per training sequence and the acting window (the paper: 1024)."""
    batch_size: int = 4
    """Sequences per training step."""
    seconds: float = 15.0
    """Timed seconds per training or acting case (training: at least `min_steps` steps, after one
    warm-up step)."""
    min_steps: int = 3
    """Fewest timed training steps per case."""
    act_preset: str = "gato-79m"
    """Preset whose acting speed is measured."""
    act_batch_sizes: tuple[int, ...] = (1, 16)
    """Environments acted for at once."""
    act_steps: int = 20
    """Most timed control steps per acting case (after one warm-up step); a case stops earlier
    once `seconds` have passed and at least 2 steps were timed (recomputing a full window for 16
    envs takes about a minute a step with gato-79m)."""
    tasks: str = "default"
    """Datasets of the training/data mixture (collected into data_dir if missing)."""
    data_dir: str = "runs/bench/data"
    """Data root for the mixture (its own, so a user's data root is never touched)."""
    episodes: int = 20
    """Demonstrations per task collected into data_dir when missing."""
    threads: int = 0
    """torch threads per case (0: torch's default, all cores)."""
    out: str = "runs/bench/results.json"
    """Results JSON; a Markdown table is written beside it (`.md`)."""


# --------------------------------------------------------------------------- the cases
# Each runs in a fresh spawned process (see _run_case), returns a dict, and adds its max RSS.


def _setup(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def gemm_case(dtype: str, n: int = 4096, reps: int = 5, threads: int = 0) -> dict:
    """Best GFLOP/s of an n x n x n matmul in `dtype` over `reps` runs (after one warm-up)."""
    import torch

    _setup(threads)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return {"dtype": dtype, "n": n, "gflops": 2 * n**3 / best / 1e9,
            "threads": torch.get_num_threads()}  # fmt: skip


def _mixture(cfg: BenchConfig, context_len: int):
    from opengato.batches.mixture import Mixture
    from opengato.batches.sources import build_shards, resolve_sources
    from opengato.batches.windows import Split
    from opengato.data.root import data_root
    from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

    tok = Tokenizer(TokenizerConfig())
    root = data_root(cfg.data_dir)
    shards = build_shards(
        resolve_sources(cfg.tasks), tok, root, root / "shards", log=lambda s: None
    )
    return tok, Mixture(shards, context_len, None, Split("train", 0.1), pad_id=tok.pad_id)


def train_case(cfg: BenchConfig, preset: str, dtype: str) -> dict:
    """Tokens/s of full training steps (data, forward, backward, clip, AdamW) of `preset`."""
    import torch

    from opengato.batches.mixture import step_rng
    from opengato.model.gato import Gato
    from opengato.model.presets import make_config
    from opengato.training.distributed import autocast

    _setup(cfg.threads)
    torch.manual_seed(0)
    tok, mix = _mixture(cfg, cfg.context_len)
    model = Gato(make_config(preset, tok.vocab_size, context_len=cfg.context_len))
    opt = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95))
    device = torch.device("cpu")

    def step(i: int) -> float:
        batch, _ = mix.sample_batch(step_rng(0, 0, i), cfg.batch_size)
        with autocast(device, dtype):
            _, loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    step(0)  # warm-up: allocations, kernel selection
    n, t0 = 0, time.perf_counter()
    while n < cfg.min_steps or time.perf_counter() - t0 < cfg.seconds:
        step(n + 1)
        n += 1
    elapsed = time.perf_counter() - t0
    tokens = n * cfg.batch_size * cfg.context_len
    return {"preset": preset, "dtype": dtype, "params": model.num_params(),
            "non_embedding_params": model.num_params(non_embedding=True),
            "batch_size": cfg.batch_size, "context_len": cfg.context_len, "steps": n,
            "steps_per_s": n / elapsed, "tokens_per_s": tokens / elapsed}  # fmt: skip


def metaworld_shaped_policy(
    preset: str, dtype: str, batch: int, context_len: int, use_cache: bool = True, slack: int = 0
):
    """A random-init `preset` GatoPolicy for a Meta-World-shaped task (Box(39) observations,
    Box(4) actions in [-1, 1]) whose window is already full; returns (policy, rng)."""
    import torch
    from gymnasium import spaces

    from opengato.agent.policy import GatoPolicy
    from opengato.model.gato import Gato
    from opengato.model.presets import make_config
    from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

    torch.manual_seed(0)
    tok = Tokenizer(TokenizerConfig())
    model = Gato(make_config(preset, tok.vocab_size, context_len=context_len))
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    obs_space = spaces.Box(-np.inf, np.inf, (39,), np.float64)  # as Meta-World's
    act_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    rng = np.random.default_rng(0)
    n_prompt = context_len // 44 + 2  # more timesteps than the window holds: it starts full
    prompt = tok.tokenize_episode(
        obs_space, act_space,
        rng.uniform(-1, 1, (n_prompt, 39)), rng.uniform(-1, 1, (n_prompt, 4)).astype(np.float32),
    )  # fmt: skip
    policy = GatoPolicy(model, tok, obs_space, act_space, num_envs=batch, use_cache=use_cache,
                        slide_slack=slack if use_cache else 0)  # fmt: skip
    policy.reset(prompt)
    return policy, rng


def act_case(cfg: BenchConfig, batch: int, use_cache: bool, dtype: str, slack: int = 0) -> dict:
    """Control steps/s of GatoPolicy on a Meta-World-shaped task with a full window."""
    _setup(cfg.threads)
    policy, rng = metaworld_shaped_policy(
        cfg.act_preset, dtype, batch, cfg.context_len, use_cache, slack
    )
    obs = rng.uniform(-1, 1, (cfg.act_steps + 1, batch, 39))
    policy.act(obs[0])
    n, t0 = 0, time.perf_counter()
    while n < cfg.act_steps and (n < 2 or time.perf_counter() - t0 < cfg.seconds):
        action = policy.act(obs[1 + n])
        n += 1
    elapsed = time.perf_counter() - t0
    assert action.shape == (batch, 4) and np.all(np.abs(action) <= 1.0)
    return {"preset": cfg.act_preset, "dtype": dtype, "batch": batch, "kv_cache": use_cache,
            "slide_slack": slack if use_cache else 0, "window": cfg.context_len, "steps": n,
            "steps_per_s": n / elapsed, "env_steps_per_s": n * batch / elapsed}  # fmt: skip


def data_case(cfg: BenchConfig, seconds: float = 10.0) -> dict:
    """Batches/s of the data pipeline at the training batch shape (one process)."""
    from opengato.batches.mixture import step_rng

    _, mix = _mixture(cfg, cfg.context_len)
    mix.sample_batch(step_rng(1, 0, 0), cfg.batch_size)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        mix.sample_batch(step_rng(1, 0, n + 1), cfg.batch_size)
        n += 1
    elapsed = time.perf_counter() - t0
    return {"batch_size": cfg.batch_size, "context_len": cfg.context_len,
            "batches_per_s": n / elapsed,
            "tokens_per_s": n * cfg.batch_size * cfg.context_len / elapsed}  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which starts afresh at exec. (ru_maxrss does
    not: a spawned child inherits the RSS its parent had when it forked.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _with_rss(fn, *args) -> dict:
    out = fn(*args)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _run_case(fn, *args) -> dict:
    """Run one case in a fresh process so that its max RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_with_rss, fn, *args).result()


# --------------------------------------------------------------------------- report


def machine() -> dict:
    """CPU model, cores visible to this process, torch version and threads."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}  # fmt: skip


def _mfu(r: dict, peak: dict[str, float]) -> str:
    """Model FLOPs utilisation of a training case against the GEMM peak of its dtype."""
    if not (p := peak.get(r["dtype"])):
        return "-"
    return f"{100 * 6 * r['non_embedding_params'] * r['tokens_per_s'] / (p * 1e9):.1f}%"


def _gemm_section(results: dict) -> list[str]:
    lines = ["## Matmul peak (4096^3 GEMM, best of 10)", "", "| dtype | GFLOP/s | peak RSS MB |",
             "| --- | ---: | ---: |"]  # fmt: skip
    lines += [
        f"| {g['dtype']} | {g['gflops']:.0f} | {g['peak_rss_mb']:.0f} |" for g in results["gemm"]
    ]
    return lines + [""]


def _train_section(results: dict, peak: dict[str, float]) -> list[str]:
    lines = ["## Training throughput (forward + backward + AdamW, real default mixture)", "",
             "| preset | params | non-emb params | dtype | batch x ctx | tokens/s | MFU | peak RSS MB |",
             "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |"]  # fmt: skip
    for r in results["train"]:
        lines.append(
            f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['non_embedding_params'] / 1e6:.1f}M"
            f" | {r['dtype']} | {r['batch_size']} x {r['context_len']} | {r['tokens_per_s']:,.0f}"
            f" | {_mfu(r, peak)} | {r['peak_rss_mb']:.0f} |"
        )
    return lines + [""]


def _act_section(results: dict) -> list[str]:
    lines = ["## Acting speed (Meta-World-shaped: 44 tokens a step, window full)", "",
             "| preset | dtype | envs | KV cache (slide slack) | control steps/s | env steps/s | "
             "peak RSS MB |", "| --- | --- | ---: | --- | ---: | ---: | ---: |"]  # fmt: skip
    for r in results["act"]:
        cache = f"yes ({r['slide_slack']})" if r["kv_cache"] else "no"
        lines.append(
            f"| {r['preset']} | {r['dtype']} | {r['batch']} | {cache}"
            f" | {r['steps_per_s']:.1f} | {r['env_steps_per_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    return lines + [""]


def _data_section(results: dict) -> list[str]:
    d = results["data"]
    lines = ["## Data pipeline headroom", "",
             f"Mixture.sample_batch at {d['batch_size']} x {d['context_len']}: "
             f"{d['batches_per_s']:,.1f} batches/s ({d['tokens_per_s']:,.0f} tokens/s), "
             f"peak RSS {d['peak_rss_mb']:.0f} MB, one process.", "",
             "| preset | dtype | training steps/s | headroom (delivered / consumed) |",
             "| --- | --- | ---: | ---: |"]  # fmt: skip
    lines += [f"| {r['preset']} | {r['dtype']} | {r['steps_per_s']:.2f} | "
              f"{d['batches_per_s'] / r['steps_per_s']:,.0f}x |" for r in results.get("train", [])]  # fmt: skip
    return lines + [""]


def to_markdown(results: dict) -> str:
    """The results as Markdown tables (what benchmarks/RESULTS.md holds)."""
    m = results["machine"]
    lines = ["# opengato benchmarks", "", f"- date: {results['date']}",
             f"- commit: `{results['commit']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
             f"({m['torch_threads']} threads), Python {m['python']}",
             f"- command: `{results['command']}`", ""]  # fmt: skip
    peak = {g["dtype"]: g["gflops"] for g in results.get("gemm", [])}
    if peak:
        lines += _gemm_section(results)
    if results.get("train"):
        lines += _train_section(results, peak)
    if results.get("act"):
        lines += _act_section(results)
    if results.get("data"):
        lines += _data_section(results)
    return "\n".join(lines)


def _cases(cfg: BenchConfig) -> list[tuple[str, tuple]]:
    """(part, (case function, *its arguments)) of every requested measurement, in order."""
    cases: list[tuple[str, tuple]] = []
    if "gemm" in cfg.what:
        cases += [("gemm", (gemm_case, d, 4096, 10, cfg.threads)) for d in cfg.dtypes]
    if "train" in cfg.what:
        cases += [("train", (train_case, cfg, p, d)) for p in cfg.train_presets for d in cfg.dtypes]
    if "act" in cfg.what:
        slack = cfg.context_len // 8  # cache with slack, cache without, no cache
        cases += [("act", (act_case, cfg, b, c, d, s)) for d in cfg.dtypes
                  for b in cfg.act_batch_sizes
                  for c, s in ((True, slack), (True, 0), (False, 0))]  # fmt: skip
    if "data" in cfg.what:
        cases.append(("data", (data_case, cfg)))
    return cases


def run_bench(cfg: BenchConfig) -> dict:
    """Run the requested measurements, print and write the tables; returns the results."""
    from tqdm import tqdm

    from opengato.data.collect import CollectConfig, run_collect

    results: dict = {
        "config": asdict(cfg),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(short=True) or "unknown",
        "machine": machine(),
        "command": "opengato bench " + " ".join(sys.argv[2:]),
    }
    if {"train", "data"} & set(cfg.what):
        run_collect(CollectConfig(tasks=cfg.tasks, episodes=cfg.episodes, data_dir=cfg.data_dir))
    out = Path(cfg.out)
    for part, (fn, *args) in tqdm(_cases(cfg), desc="bench", unit="case"):
        r = _run_case(fn, *args)
        tqdm.write(f"{part}: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                             for k, v in r.items()}))  # fmt: skip
        if part == "data":
            results["data"] = r
        else:
            results.setdefault(part, []).append(r)
        atomic_write_json(out, results)  # partial results survive an interruption
    md = to_markdown(results)
    atomic_write_text(out.with_suffix(".md"), md)
    print("\n" + md)
    print(f"results: {out} and {out.with_suffix('.md')}")
    return results


__all__ = ["BenchConfig", "run_bench", "to_markdown"]
