"""Host time of a GPU evaluation, measured on a CPU: the evaluating process's CPU time per
environment step of a grouped suite-scale evaluation, with the model's forward passes replaced
by random logits (on a GPU they are kernels the host only launches; the KV cache's row
bookkeeping still runs, its attention mask, device work on a GPU, does not). What is left is
the per-step work this process does for every env besides the forwards: stacking observations,
tokenising them, building the lane's token stack, sampling, handing actions to the env workers
and reading their replies. On a GPU it adds to every lock-step of the evaluation.

    python benchmarks/eval_host.py [tasks] [how many] [envs a task] [env workers] [mix] [group]
        [concurrent] [device ms]

e.g. `python benchmarks/eval_host.py babyai 32 20 2` (the suite's group: 32 levels x 20 envs in
one lane). `tasks` is any `opengato eval --tasks` spec (held-out tasks left out); `mix` plays
tasks of several spaces as one batch (`--mix-spaces`), as the suite does; `group` (default: how
many) is both `--concurrent-tasks` and `--group-tasks`, e.g. the whole suite as it evaluates:
`python benchmarks/eval_host.py babyai,metaworld,classic,mujoco,dmc,minatar 156 20 2 mix 32`.
`concurrent` (default: `group`) sets `--concurrent-tasks` apart: twice `group` keeps two groups
in flight. `device ms` makes each stand-in forward also sleep that long, the time a GPU's
forward would keep this process waiting (sampling reads its logits back), so that the env
workers' stepping can overlap the forwards of another group as it would on a GPU.
Prints: wall s, this process's CPU s in the evaluation, env steps, CPU microseconds per env
step, forward passes, and how much of the CPU went to the random logits and to sampling from
them (device work on a GPU). Actions are random, so episodes run to about their step limits;
their count differs a little between runs (the logits are not seeded). No prompts.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import torch

DEVICE_WORK = {"forwards": 0, "rows": 0, "slots": 0, "logits_s": 0.0, "sample_s": 0.0}
"""What would be device work on a GPU: forward passes (their rows and token slots) and the CPU
seconds of their stand-in logits, and of sampling from them (`GatoPolicy._sample`)."""
SHAPES: dict[tuple, int] = {}
"""Forwards per (KV cache, batch shape, vocab): model/compiled.py records a CUDA graph of a
(cache, shape) once its eager forwards have cost what a recording costs, and replays it after."""
CACHES: dict[int, object] = {}
"""The caches seen, kept alive so that no later cache takes one's id (they hold no buffers)."""


DEVICE_S = 0.0
"""Seconds each stand-in forward sleeps (the `device ms` argument): a GPU forward's wait."""


def fake_next_logits(self, batch, cache=None, vocab=None):
    """Random logits (B, V), advancing the cache's bookkeeping as a forward would; then a
    sleep of DEVICE_S, as waiting on a GPU's forward would."""
    if DEVICE_S:
        time.sleep(DEVICE_S)
    c = time.process_time()
    DEVICE_WORK["forwards"] += 1
    key = (id(cache), *batch.ids.shape, *(vocab or ()))
    CACHES[id(cache)] = cache
    SHAPES[key] = SHAPES.get(key, 0) + 1
    DEVICE_WORK["rows"] += batch.ids.shape[0]
    DEVICE_WORK["slots"] += batch.ids.numel()
    try:
        return _fake_next_logits(self, batch, cache, vocab)
    finally:
        DEVICE_WORK["logits_s"] += time.process_time() - c


def _fake_next_logits(self, batch, cache, vocab):
    B, T = batch.ids.shape[:2]
    if cache is not None:
        if cache.ragged:
            lead = np.zeros(len(cache.row_pos), np.int64) if cache.lead is None else cache.lead
            cache.lead, cache._lead = None, lead
        cache.advance(T) if cache.ragged else setattr(cache, "length", cache.length + T)
    return torch.randn(B, self.cfg.vocab_size if vocab is None else vocab[1] - vocab[0])


def main(domain: str, n_tasks: int, envs: int, workers: int, mix: bool = False,
         group: int | None = None, concurrent: int | None = None,
         device_ms: float = 0.0) -> None:  # fmt: skip
    global DEVICE_S
    DEVICE_S = device_ms / 1e3
    import opengato.agent.evaluate as ev
    from opengato.agent import policy
    from opengato.agent.eval_config import EvalConfig
    from opengato.agent.policy import GatoPolicy
    from opengato.model.gato import Gato
    from opengato.tasks import select

    sample = GatoPolicy._sample

    def timed_sample(*a, **k):
        c = time.process_time()
        try:
            return sample(*a, **k)
        finally:
            DEVICE_WORK["sample_s"] += time.process_time() - c

    GatoPolicy._sample = timed_sample
    policy.CHUNK_TOKENS["cpu"] = policy.CHUNK_TOKENS["cuda"]  # a GPU's forwards, not a CPU's chunks
    group = group or n_tasks

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    tasks = select(f"{domain},-heldout")[0][:n_tasks]
    Gato.next_logits = fake_next_logits
    spent = {}
    run_tasks = ev._run_tasks

    def timed(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        out = run_tasks(*a, **k)
        spent.update(wall=time.perf_counter() - t, cpu=time.process_time() - c)
        return out

    ev._run_tasks = timed
    res = ev.run_eval(EvalConfig(checkpoint="random:gato-tiny", tasks=tasks, episodes=envs,
                                 num_envs=envs, env_workers=workers,
                                 concurrent_tasks=concurrent or group,
                                 group_tasks=group, mix_spaces=mix, prompt=False, bootstrap=10,
                                 out="runs/eval-host/eval.json"))  # fmt: skip
    steps = sum(e["length"] for r in res["tasks"].values() for e in r.get("episodes", []))
    print(f"{domain} {n_tasks} tasks x {envs} envs, {workers} env workers: wall {spent['wall']:.1f} s, "
          f"evaluating process CPU {spent['cpu']:.2f} s, {steps:,} env steps, "
          f"{spent['cpu'] / steps * 1e6:.1f} us of CPU an env step")  # fmt: skip
    d, n = DEVICE_WORK, max(1, DEVICE_WORK["forwards"])
    print(f"{d['forwards']:,} forward passes ({d['rows'] / n:.1f} rows and {d['slots'] / n:,.0f} "
          f"token slots each); of the CPU, {d['logits_s']:.2f} s in their random logits and "
          f"{d['sample_s']:.2f} s sampling (device work on a GPU): the rest "
          f"{spent['cpu'] - d['logits_s'] - d['sample_s']:.2f} s")  # fmt: skip
    second = sum(c >= 2 for c in SHAPES.values())
    print(f"forwards meeting their (KV cache, batch shape, vocab) for the 1st time {len(SHAPES):,}, "
          f"the 2nd {second:,}, the 3rd or later {d['forwards'] - len(SHAPES) - second:,}")  # fmt: skip
    meets = np.sort(np.fromiter(SHAPES.values(), np.int64))
    print("meetings a (cache, shape, vocab): quantiles 10/25/50/75/90%",
          [int(np.quantile(meets, q, method="lower")) for q in (0.1, 0.25, 0.5, 0.75, 0.9)],
          "; recorded at meeting N (eager forwards before): "
          + ", ".join(f"N={n} {int((meets >= n).sum())} ({int(np.minimum(meets, n - 1).sum()):,})"
                      for n in (2, 4, 8, 16, 32, 64)))  # fmt: skip


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a else "babyai", int(a[1]) if len(a) > 1 else 32, int(a[2]) if len(a) > 2 else 20,
         int(a[3]) if len(a) > 3 else 2, len(a) > 4 and a[4] == "mix",
         int(a[5]) if len(a) > 5 else None, int(a[6]) if len(a) > 6 else None,
         float(a[7]) if len(a) > 7 else 0.0)  # fmt: skip
