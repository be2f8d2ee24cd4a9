"""`opengato bench`: how fast opengato trains and acts on this machine, and how much memory.

    opengato bench                                  # everything, ~15 min on 2 CPU cores
    opengato bench --what act --act-batch-sizes 1   # one part

Four measurements, each case in a fresh process so that its peak memory (max RSS) is its own:

1. `gemm`   the device's matmul peak: the best of several large fp32 and bf16 GEMMs (GFLOP/s),
            so that model FLOPs utilisation is a ratio that holds on any machine.
2. `train`  training steps as `opengato train` runs them (the same step function: forward,
            backward, clip, fused AdamW; batches of the real default mixture built ahead by the
            prefetch thread; eager or `--compile True`): tokens/s counts *real* tokens, the
            ones that are not padding, and `slots_per_s` every position (batch x context_len a
            step); MFU = 6 x non-embedding parameters x real tokens/s / peak of the compute dtype
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
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np

from opengato.bench_policy import metaworld_shaped_policy
from opengato.bench_tables import machine, to_markdown
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
    """Timed seconds per training or acting case (training: at least `min_steps` steps, after
    `warmup_steps` untimed ones)."""
    min_steps: int = 3
    """Fewest timed training steps per case."""
    act_preset: str = "gato-79m"
    """Preset whose acting speed is measured."""
    act_batch_sizes: tuple[int, ...] = (1, 16)
    """Environments acted for at once."""
    act_int8: bool = True
    """Also measure acting with int8 weights (opt-in, fp32 activations; model/quantize.py)."""
    act_compiled: bool = True
    """Also measure acting through compiled graphs (`--weights compiled`; model/compiled.py:
    torch.compile's on a CPU, CUDA graphs on a GPU), after untimed steps that make them."""
    act_steps: int = 40
    """Most timed control steps per acting case (after one warm-up step); a case stops earlier
    once `seconds` have passed and at least 2 repeats were timed (recomputing a full window for 16
    envs takes about a minute a step with gato-79m)."""
    tasks: str = "default"
    """Datasets of the training/data mixture (collected into data_dir if missing)."""
    data_dir: str = "runs/bench/data"
    """Data root for the mixture (its own, so a user's data root is never touched)."""
    episodes: int = 20
    """Demonstrations per task collected into data_dir when missing."""
    threads: int = 0
    """torch threads per case (0: torch's default, all cores)."""
    device: str = "auto"
    """Where the GEMM and training cases run: `auto` (CUDA when present, else CPU), `cpu`,
    `cuda`, ..."""
    act_device: str = "cpu"
    """Where the acting cases run: `cpu` (packed, plain, compiled and int8 weights, with and
    without the cache), `cuda` (plain and compiled weights with the cache: packing and int8
    are CPU paths) or `auto`."""
    compile: tuple[bool, ...] = (False,)
    """Training cases eager (False) and/or torch.compiled (True): `--compile False True`
    measures both side by side."""
    compile_scope: Literal["blocks", "model"] = "blocks"
    """What the compiled training cases compile (`opengato train --compile-scope`): each
    transformer block, one graph they share, or the whole forward and loss as one graph."""
    warmup_steps: int = 3
    """Fewest untimed training steps before the timed ones (allocations); compiled cases warm
    longer and restart their timing after a compilation (`_Window`); the results count both."""
    prefetch: int = 2
    """Training batches built ahead by the prefetch thread (0: in the loop)."""
    out: str = "runs/bench/results.json"
    """Results JSON; a Markdown table is written beside it (`.md`)."""


# --------------------------------------------------------------------------- the cases
# Each runs in a fresh spawned process (see _run_case), returns a dict, and adds its max RSS.


def _setup(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_case(
    dtype: str, n: int = 4096, reps: int = 5, threads: int = 0, device: str = "cpu"
) -> dict:
    """Best GFLOP/s of an n x n x n matmul in `dtype` on `device` over `reps` runs (after one
    warm-up)."""
    import torch

    _setup(threads)
    dev = _device(device)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=dt, device=dev), torch.randn(n, n, dtype=dt, device=dev)
    torch.mm(a, b)
    _sync(dev)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return {"dtype": dtype, "n": n, "gflops": 2 * n**3 / best / 1e9, "device": str(dev),
            "threads": torch.get_num_threads()}  # fmt: skip


def _mixture(cfg: BenchConfig, context_len: int):
    """The tokenizer and the training mixture of `opengato train`'s defaults (prompts, packing,
    weights) over `cfg.tasks`."""
    from opengato.batches.mixture import Mixture
    from opengato.batches.sources import build_shards, resolve_sources
    from opengato.batches.windows import Split
    from opengato.data.root import data_root
    from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig
    from opengato.training.config import TrainConfig

    tok, t = Tokenizer(TokenizerConfig()), TrainConfig()
    root = data_root(cfg.data_dir)
    shards = build_shards(
        resolve_sources(cfg.tasks), tok, root, root / "shards", log=lambda s: None
    )
    return tok, Mixture(shards, context_len, t.weights, Split("train", t.val_fraction),
                        t.prompt_fraction, t.prompt_end_fraction, t.prompt_len, tok.pad_id,
                        t.loss_weights, t.pack)  # fmt: skip


def train_case(cfg: BenchConfig, preset: str, dtype: str, compile: bool = False) -> dict:
    """Training steps of `preset` as the training loop runs them (training/train.py's
    `step_data` and `train_step`, the prefetch thread, nothing read back from the device until
    the timed steps end): real tokens/s, slots/s (padding included), the first step's seconds
    (with `compile`, compilation) and, on a GPU, peak GPU memory."""
    import torch

    from opengato.batches.prefetch import Prefetcher
    from opengato.model.gato import Gato
    from opengato.model.presets import make_config
    from opengato.training.config import TrainConfig
    from opengato.training.distributed import Processes, compile_model, default_generator
    from opengato.training.train import step_data, train_step

    _setup(cfg.threads)
    torch.manual_seed(0)
    device = _device(cfg.device)
    tok, mix = _mixture(cfg, cfg.context_len)
    model = Gato(make_config(preset, tok.vocab_size, context_len=cfg.context_len)).to(device)
    model.train()
    opt = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95))
    runner = compile_model(model, cfg.compile_scope) if compile else model
    train_cfg = TrainConfig(dtype=dtype, grad_clip=1.0, seed=0)
    procs = Processes(world=1, rank=0, device=device, own_group=False)
    data = step_data(train_cfg, mix, model, procs, cfg.batch_size)
    generator = default_generator(device)
    window = _Window(compile, cfg.warmup_steps, partial(_sync, device))
    start = window.t0
    with Prefetcher(data, 0, 2**62, cfg.prefetch) as steps:  # until the time is up
        for _, (seed, host_batch, real_tokens) in steps:
            graphs = _graphs_compiled()
            batch = host_batch.to(device, non_blocking=True)
            loss, _ = train_step(runner, model, opt, batch, generator, seed, train_cfg)
            opt.step()
            new_graph = _graphs_compiled() != graphs
            if compile and (window.warming or new_graph):  # in a short lease's log
                print(f"[bench] {preset} compiled, step {window.warmup + window.timed + 1}: "
                      f"{_graphs_compiled()} graphs, {time.perf_counter() - start:.1f} s in",
                      file=sys.stderr, flush=True)  # fmt: skip
            window.step(new_graph, real_tokens)
            if window.timed >= cfg.min_steps and window.elapsed() >= cfg.seconds:
                break
    final_loss = float(loss)  # waits for the device to finish the timed steps
    w, elapsed = window, window.elapsed()
    slots = w.timed * cfg.batch_size * cfg.context_len
    out = {"preset": preset, "dtype": dtype, "compile": compile, "device": str(device),
           "compile_scope": cfg.compile_scope if compile else None,
           "params": model.num_params(), "non_embedding_params": model.num_params(non_embedding=True),
           "batch_size": cfg.batch_size, "context_len": cfg.context_len, "steps": w.timed,
           "steps_per_s": w.timed / elapsed, "tokens_per_s": w.real / elapsed,
           "slots_per_s": slots / elapsed, "pad_fraction": 1 - w.real / slots,
           "warmup_steps": w.warmup, "warmup_s": w.warmup_s, "final_loss": final_loss,
           "timing_restarts": w.restarts,
           "graphs_compiled_while_timed": _graphs_compiled() - w.graphs_before}  # fmt: skip
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


@dataclass
class _Window:
    """The timed steps of a training case. Warm-up first: `warmup_steps`, and compiled, until 3
    steps in a row compile no new graph (batches with and without images, then sizes made
    symbolic), at most 50. A graph compiled while timed (a kind of batch the warm-up never
    drew) starts the timing again after it, at most 3 times: the first H100 lease's compiled
    figures timed compilations. Timing opens once the device has done what came before."""

    compile: bool
    warmup_steps: int
    sync: Callable[[], None]
    warming: bool = True
    warmup: int = 0  # untimed steps
    quiet: int = 0  # warm-up steps in a row that compiled nothing
    timed: int = 0
    real: int = 0  # real tokens of the timed steps
    restarts: int = 0
    warmup_s: float = 0.0
    graphs_before: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def step(self, new_graph: bool, real_tokens: int) -> None:
        if self.warming:
            self.warmup += 1
            self.quiet = 0 if new_graph else self.quiet + 1
            if self.warmup >= max(1, self.warmup_steps) and (
                not self.compile or self.quiet >= 3 or self.warmup >= 50
            ):
                self._open()
        elif self.compile and new_graph and self.restarts < 3:
            self.warmup, self.restarts = self.warmup + self.timed + 1, self.restarts + 1
            self._open()
        else:
            self.timed, self.real = self.timed + 1, self.real + real_tokens

    def _open(self) -> None:
        self.sync()
        self.warmup_s += time.perf_counter() - self.t0
        self.warming, self.timed, self.real = False, 0, 0
        self.t0, self.graphs_before = time.perf_counter(), _graphs_compiled()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _graphs_compiled() -> int:
    """Graphs torch.compile has made in this process so far (0 eager)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


WARM_STEPS = 200
"""Most untimed steps of a compiled acting case before its timed ones."""


def act_case(cfg: BenchConfig, batch: int, use_cache: bool, dtype: str, weights: str) -> dict:
    """Control steps/s of GatoPolicy on a Meta-World-shaped task with a full window: the median
    over repeats of up to `act_steps // 5` steps (fewer when a step is slow: about five repeats
    fit in `seconds`), stopping once `seconds` have passed after at least two repeats. Compiled
    weights: also the untimed steps' seconds and the decoder's `decoding_stats` (graphs recorded
    and their seconds)."""
    from opengato.model.compiled import decoding_stats

    _setup(cfg.threads)
    device = _device(cfg.act_device)
    policy, rng = metaworld_shaped_policy(
        cfg.act_preset, dtype, batch, cfg.context_len, use_cache, weights, str(device)
    )
    obs = rng.uniform(-1, 1, (cfg.act_steps + 1 + WARM_STEPS, batch, 39))
    warm, t0 = 0, time.perf_counter()
    while weights == "compiled" and warm < WARM_STEPS:  # until a step runs nothing eagerly:
        eager = decoding_stats(policy.model)["eager"]  # the prefill's and a token's graphs made
        policy.act(obs[-1 - warm])  # (on a GPU once their eager forwards cost a recording)
        warm += 1
        if warm >= 3 and decoding_stats(policy.model)["eager"] == eager:
            break
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    policy.act(obs[0])
    first = time.perf_counter() - t0  # a slow case (no cache) gets repeats of one step
    chunk = max(1, min(cfg.act_steps // 5, int(cfg.seconds / 5 / first)))
    rates, n, start = [], 0, time.perf_counter()
    while n + chunk <= cfg.act_steps and (
        len(rates) < 2 or time.perf_counter() - start < cfg.seconds
    ):
        t0 = time.perf_counter()
        for _ in range(chunk):
            action = policy.act(obs[1 + n])
            n += 1
        rates.append(chunk / (time.perf_counter() - t0))
    assert action.shape == (batch, 4) and np.all(np.abs(action) <= 1.0)
    rate = statistics.median(rates)
    return {"preset": cfg.act_preset, "dtype": "fp32" if weights == "int8" else dtype,
            "device": str(device), "weights": weights, "batch": batch, "kv_cache": use_cache, "window": cfg.context_len,
            "steps": n, "repeats": len(rates), "steps_per_s": rate,
            "steps_per_s_range": [min(rates), max(rates)], "env_steps_per_s": rate * batch,
            **({"compile_s": compile_s, "warm_steps": warm,
                "decoding": decoding_stats(policy.model)} if warm else {})}  # fmt: skip


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


def _cases(cfg: BenchConfig) -> list[tuple[str, tuple]]:
    """(part, (case function, *its arguments)) of every requested measurement, in order."""
    cases: list[tuple[str, tuple]] = []
    if "gemm" in cfg.what:
        n = 8192 if _device(cfg.device).type == "cuda" else 4096  # a GPU needs more to peak
        cases += [("gemm", (gemm_case, d, n, 10, cfg.threads, cfg.device)) for d in cfg.dtypes]
    if "train" in cfg.what:
        cases += [("train", (train_case, cfg, p, d, c)) for p in cfg.train_presets
                  for d in cfg.dtypes for c in cfg.compile]  # fmt: skip
    if "act" in cfg.what and _device(cfg.act_device).type != "cpu":  # with the cache
        kinds = ("plain", "compiled") if cfg.act_compiled else ("plain",)
        cases += [("act", (act_case, cfg, b, True, d, w)) for d in cfg.dtypes
                  for w in kinds for b in cfg.act_batch_sizes]  # fmt: skip
    elif "act" in cfg.what:  # packed and plain weights with the cache, packed without; int8
        cases += [("act", (act_case, cfg, b, c, d, w)) for d in cfg.dtypes
                  for b in cfg.act_batch_sizes
                  for c, w in ((True, "packed"), (True, "plain"), (False, "packed"))]  # fmt: skip
        if cfg.act_compiled:
            cases += [("act", (act_case, cfg, b, True, d, "compiled")) for d in cfg.dtypes
                      for b in cfg.act_batch_sizes]  # fmt: skip
        if cfg.act_int8:
            cases += [
                ("act", (act_case, cfg, b, True, "fp32", "int8")) for b in cfg.act_batch_sizes
            ]
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


__all__ = ["BenchConfig", "run_bench"]
