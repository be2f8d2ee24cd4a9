"""`opengato bench`'s report: the machine it ran on and the results as Markdown tables (what
benchmarks/RESULTS.md holds)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    """CPU model, cores visible to this process, torch version and threads; the GPU, if any."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "python": platform.python_version()}  # fmt: skip
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def _mfu(r: dict, peak: dict[str, float]) -> str:
    """Model FLOPs utilisation of a training case against the GEMM peak of its dtype."""
    if not (p := peak.get(r["dtype"])):
        return "-"
    return f"{100 * 6 * r['non_embedding_params'] * r['tokens_per_s'] / (p * 1e9):.1f}%"


def _gemm_section(results: dict) -> list[str]:
    g0 = results["gemm"][0]
    lines = [f"## Matmul peak ({g0['n']}^3 GEMM on {g0.get('device', 'cpu')}, best of 10)", "",
             "| dtype | GFLOP/s | peak RSS MB |", "| --- | ---: | ---: |"]  # fmt: skip
    lines += [
        f"| {g['dtype']} | {g['gflops']:.0f} | {g['peak_rss_mb']:.0f} |" for g in results["gemm"]
    ]
    return lines + [""]


def _train_section(results: dict, peak: dict[str, float]) -> list[str]:
    gpu = any("peak_cuda_mb" in r for r in results["train"])
    lines = ["## Training throughput (as `opengato train` runs it, real default mixture)", "",
             "tokens/s counts real tokens (not padding), and MFU is computed from them; "
             "warm-up s: the untimed first steps (with compile: compiling).", "",
             "| preset | params | non-emb params | dtype | compiled | batch x ctx | tokens/s "
             "| padding | MFU | warm-up s | peak RSS MB |" + (" peak GPU MB |" if gpu else ""),
             "| --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
             + (" ---: |" if gpu else "")]  # fmt: skip
    for r in results["train"]:
        pad, warm = r.get("pad_fraction"), r.get("warmup_s")
        gpu_mb = f" {r['peak_cuda_mb']:.0f} |" if "peak_cuda_mb" in r else " - |"
        lines.append(
            f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['non_embedding_params'] / 1e6:.1f}M"
            f" | {r['dtype']} | {r.get('compile_scope') or 'yes' if r.get('compile') else 'no'}"
            f" | {r['batch_size']} x {r['context_len']} | {r['tokens_per_s']:,.0f}"
            f" | {'-' if pad is None else f'{100 * pad:.1f}%'} | {_mfu(r, peak)}"
            f" | {'-' if warm is None else f'{warm:.1f}'} | {r['peak_rss_mb']:.0f} |"
            + (gpu_mb if gpu else "")
        )
    return lines + [""]


def _act_section(results: dict) -> list[str]:
    lines = ["## Acting speed (Meta-World-shaped: 44 tokens a step, window full)", "",
             "Control steps/s: the median over repeats, with the slowest and fastest repeat.", "",
             "| preset | dtype | weights | envs | KV cache | control steps/s | (range) "
             "| env steps/s | peak RSS MB |",
             "| --- | --- | --- | ---: | --- | ---: | --- | ---: | ---: |"]  # fmt: skip
    for r in results["act"]:
        lo, hi = r.get("steps_per_s_range", [r["steps_per_s"]] * 2)
        lines.append(
            f"| {r['preset']} | {r['dtype']} | {r.get('weights', 'plain')}"
            + (f" ({r['device']})" if r.get("device", "cpu") != "cpu" else "")
            + f" | {r['batch']}"
            f" | {'yes' if r['kv_cache'] else 'no'} | {r['steps_per_s']:.1f} | {lo:.1f}-{hi:.1f}"
            f" | {r['env_steps_per_s']:.1f} | {r['peak_rss_mb']:.0f} |"
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
    lines += [f"| {r['preset']}{' (compiled)' if r.get('compile') else ''} | {r['dtype']} | {r['steps_per_s']:.2f} | "
              f"{d['batches_per_s'] / r['steps_per_s']:,.0f}x |" for r in results.get("train", [])]  # fmt: skip
    return lines + [""]


def to_markdown(results: dict) -> str:
    """The results as Markdown tables (what benchmarks/RESULTS.md holds)."""
    m = results["machine"]
    lines = ["# opengato benchmarks", "", f"- date: {results['date']}",
             f"- commit: `{results['commit']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores"
             + (f", {m['gpu']}" if m.get("gpu") else "") + f", torch {m['torch']} "
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


__all__ = ["machine", "to_markdown"]
