#!/usr/bin/env bash
# `opengato suite` on a GPU machine as one command, set-up and collection included, inside a
# fixed wall-clock total (default 10 minutes, issue 13): collect every built-in task on all
# cores, train with the steps that fit (--budget-minutes), evaluate on held-out seeds, report.
# Everything it keeps goes to $OUT: the results JSON, the report, the logs; never the weights.
#
# On the GPU machine (python3 holds PyTorch; no network, no EGL), from the repository root,
# carrying the wheels of what its image lacks (the device tool's `run` with carry [".whl"] and
# timeout_s 600):
#
#     bash benchmarks/suite_gpu.sh
#
# The wheels (Python 3.12, manylinux x86-64, in .whl/, 18 MiB): `python benchmarks/gpu_wheels.py
# --check` downloads them and slims Meta-World's and dm_control's (see there). Box2D is for the
# two LunarLander tasks, dm_control + shimmy for dmc, MinAtar for minatar: a domain whose
# packages are missing is left out, and the log says so. They are installed into /tmp/site only
# when the packages are missing. pygame (12 MB) would fit but is not needed: an import stub
# (benchmarks/gpu_stubs) stands in.
#
# Where the 10 minutes go (the second H100 lease, 2026-11-27, benchmarks/RESULTS.md): set-up
# 11 s; collection of the 156 tasks (300 BabyAI, 200 other demonstrations a task; the random
# scores ship) 6.3 min on 14 cores, when the main process still finished each task itself,
# ~2 min expected since that runs in the workers (the same collection took 831 s on 2 workers of
# a 2-core VM, main thread busy 5.3 s); tokenising 23 s, now inside the collection (each dataset
# as it is written: the log says how long that ran past the last task); calibration ~17 s
# (gato-20m at 64 x 1024: 825,342 tokens/s); 3 min kept for evaluation and the report; training
# gets the rest, printed as `=> --train.steps`, with its validation passes at 16 rows a dataset.
#
# The same script at toy scale on a CPU (how it is checked where there is no GPU):
#
#     OUT=/tmp/suite-out PYTHON=.venv/bin/python SUITE_TOTAL_MINUTES=3 SUITE_ARGS="--tasks
#     classic/CartPole-v1,babyai/GoToObj,text/qa --train.preset gato-tiny --train.device cpu
#     --train.batch-size 4 --train.context-len 256 ..." bash benchmarks/suite_gpu.sh
#
# Environment: OUT (required); PYTHON (python3); SUITE_TOTAL_MINUTES (10: the whole script);
# SUITE_MIN_STEPS (300: trained even when a slow collection leaves the budget fewer, so a lease
# still evaluates something: the second lease's collection left none, and the run stopped);
# SUITE_SAFETY_S (40: kept out of the budget for the interpreter's start before the budget's
# clock and for packing the results; the suite stops its episodes when the budget less 30 s is
# spent, `--eval.max-minutes`, and scores captions and answers in those 30 s; as a safety net
# the run is stopped 30 s before the total, and a report made of what it evaluated);
# SUITE_ARGS (more `opengato suite` options, after the
# script's own); SUITE_DATA (/tmp/opengato-suite: data root and run folder, outside $OUT).
set -uo pipefail
SECONDS=0  # bash counts the script's seconds from here
: "${OUT:?set OUT to the folder that receives the results}"
PYTHON=${PYTHON:-python3}
TOTAL_MIN=${SUITE_TOTAL_MINUTES:-10}
SAFETY_S=${SUITE_SAFETY_S:-40}
WORK=${SUITE_DATA:-/tmp/opengato-suite}
rm -rf "$WORK/run"  # a run folder of an earlier call would pass its files off as this one's
mkdir -p "$OUT" "$WORK"
LOG="$OUT/suite.log"
export MUJOCO_GL=${MUJOCO_GL:-disable} PYTHONUNBUFFERED=1
export OPENGATO_DATA="$WORK/data" OPENGATO_CACHE="$WORK/cache"
exec > >(tee -a "$LOG") 2>&1

echo "== suite_gpu.sh: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo "${OPENGATO_COMMIT:-?}")"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi: no GPU"
echo "cores $(nproc), MUJOCO_GL=$MUJOCO_GL, total ${TOTAL_MIN} min, python $PYTHON"

# --- set-up: the packages the image lacks, from the carried wheels
need="import gymnasium, minigrid, metaworld, minari, tyro, mujoco"
if ! $PYTHON -c "import pygame" 2>/dev/null; then  # see benchmarks/gpu_stubs/pygame
    export PYTHONPATH=$PWD/benchmarks/gpu_stubs${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PYTHON -c "$need" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "missing packages and no .whl/ wheels to install"; exit 1; }
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PYTHON -c "$need; import opengato, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
# The suite's domains whose packages the machine lacks are left out, and the log says so: Box2D
# (the two LunarLander tasks), dm_control + shimmy (dmc), MinAtar (minatar).
tasks=()
spec=$($PYTHON - <<'PY'
import importlib.util as u
from opengato.tasks import SUITE, list_tasks
missing = lambda *mods: [m for m in mods if u.find_spec(m) is None]
parts, notes = list(SUITE), []
if missing("Box2D"):
    parts[parts.index("classic")] = ",".join(t for t in list_tasks("classic") if "LunarLander" not in t)
    notes.append("no Box2D: the LunarLander tasks are left out")
for suite, mods in {"dmc": ("dm_control", "shimmy"), "minatar": ("minatar",)}.items():
    if missing(*mods):
        parts.remove(suite)
        notes.append(f"no {'/'.join(missing(*mods))}: the {suite} suite is left out")
print(",".join(parts) if notes else "")
print("; ".join(notes))
PY
)
if [ -n "$(echo "$spec" | head -1)" ]; then
    tasks=(--tasks "$(echo "$spec" | head -1)")
    echo "WARNING: $(echo "$spec" | tail -1) (tasks: ${tasks[1]})"
fi

# --- the run: what is left of the total, less the safety margin, is the budget
setup_s=$SECONDS
budget=$($PYTHON -c "print(round(($TOTAL_MIN * 60 - $setup_s - $SAFETY_S) / 60, 2))")
limit=$($PYTHON -c "print(int($TOTAL_MIN * 60 - $setup_s - 30))")  # 30 s to pack the results
echo "== set-up took ${setup_s} s; budget ${budget} min; the run is stopped after ${limit} s"
# shellcheck disable=SC2086  # SUITE_ARGS is a list of options
timeout --signal=INT --kill-after=5 "$limit" $PYTHON -m opengato.cli suite \
    --out-dir "$WORK/run" "${tasks[@]}" --budget-minutes "$budget" \
    --budget-min-steps "${SUITE_MIN_STEPS:-300}" ${SUITE_ARGS:-}
status=$?
echo "== opengato suite exited with $status after $SECONDS s in all"

# --- what comes back (at most 8 files): results, report, figures, logs; never weights
run="$WORK/run"
if [ -f "$run/eval.json" ] && [ ! -f "$run/report/report.md" ]; then  # stopped after eval
    timeout 20 $PYTHON -m opengato.cli report "$run/eval.json" --out-dir "$run/report" \
        --title "opengato suite (stopped early)" --no-gifs
fi
for f in eval.json report/report.md report/figure5.png report/figure5_domains.png; do
    [ -f "$run/$f" ] && cp "$run/$f" "$OUT/"
done
tar -czf "$OUT/run.tar.gz" -C "$run" --exclude='*.safetensors' --exclude='*.pt' \
    --exclude='rollouts' demo_config.json calibration.log report train 2>/dev/null
$PYTHON - "$OUT/summary.json" "$status" "$setup_s" "$budget" "$SECONDS" <<'EOF'
import json, sys
out, status, setup, budget, total = sys.argv[1:]
summary = {"exit_status": int(status), "setup_s": float(setup), "budget_min": float(budget),
           "script_s": float(total)}
try:
    res = json.load(open(out.replace("summary.json", "eval.json")))
    summary["aggregates"] = res.get("aggregates")
    summary["unfinished"] = res.get("unfinished", [])  # left by the time limit: not scored
    summary["failed"] = sorted(t for t, r in res.get("tasks", {}).items() if "error" in r)
    for key in ("captions", "qa"):  # the language scores, less their examples
        summary[key] = {k: v for k, v in (res.get(key) or {}).items() if k != "examples"}
except (OSError, ValueError):
    summary["aggregates"] = None
json.dump(summary, open(out, "w"), indent=1)
EOF
ls -la "$OUT"
exit "$status"
