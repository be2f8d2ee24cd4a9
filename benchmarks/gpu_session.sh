#!/usr/bin/env bash
# Everything one short GPU lease measures, as one command (issues 13 and 16): the whole-suite run
# (benchmarks/suite_gpu.sh: collect, train, evaluate, report inside a fixed total) and, while the
# suite collects on the CPU cores and the GPU would idle, GPU measurements in a fixed order (see
# `bench_parts`): acting at batch 512 profiled and its attention A/B'd, `opengato bench`'s acting,
# compiled training, the CUDA tests, eager training with the GEMM peak, the batch-1 profile.
#
# The two never share a core or the GPU: the suite runs on cores 2-15 (`taskset`), the bench on
# cores 0-1, and the bench is stopped the moment the suite begins stage 2 (calibration and
# training use the GPU); whatever bench case finished before that is kept (its JSON is written
# after every case). The suite thus has 14 of the 16 cores, the bench only the collection window.
#
# On the GPU machine, from the repository root, with the wheels in .whl/ and the bench data and
# text model in .gpucache/ (device tool `run`, carry [".whl", ".gpucache"], timeout_s 600):
#
#     bash benchmarks/gpu_session.sh
#
# What the bench's window leaves (compiled training, the training profile, gato-1.18b) goes in a
# second call on the same warm machine: `bash benchmarks/gpu_followup.sh` (~4 minutes).
#
# To run a committed state while the working tree changes, ship `git archive --format=tar.gz HEAD
# > .gpucache/src.tgz` and run from its copy (how 07faf20 was measured):
#
#     mkdir -p /tmp/src && tar -xzf .gpucache/src.tgz -C /tmp/src && ln -s $PWD/.whl /tmp/src/.whl
#     && ln -s $PWD/.gpucache /tmp/src/.gpucache && cd /tmp/src && OPENGATO_COMMIT=<sha>
#     bash benchmarks/gpu_session.sh
#
# `bash benchmarks/gpu_prepare.sh` makes .whl/ and .gpucache/ in one go (~2 min here; DEMO=1 adds
# `make demo` for the checkpoint below). What they hold:
# .gpucache/benchdata.txz: `opengato bench`'s data root for the default tasks (20 episodes a
# task; made by `opengato bench --what data --data-dir runs/bench/data`, then
# `tar -cJf .gpucache/benchdata.txz -C runs/bench/data minari vision text corpora.json
# scores.json`), so the bench need not collect; .gpucache/text/: the SentencePiece text model;
# .gpucache/demo-ckpt/: the CPU demo's checkpoint, less its training state (`make demo`'s
# runs/demo/train/step_0001750/{config.json,model.safetensors,text.model}, 4.3 MB; kept at
# runs/demo-baseline), whose answers gpu_followup.sh scores on the suite's held-out questions.
#
# Environment: OUT (required); SESSION_END_S (575: seconds after this script's start by which
# the suite must end); BENCH_DEVICE (cuda); BENCH_TRAIN (options of the training cases);
# BENCH_ACT (options of the acting cases); SUITE_ARGS (passed on); SUITE_CORES (2-15);
# BENCH_CORES (0,1); ALL_CORES (0-15: the suite's once the bench stops); PYTHON (python3).
# benchmarks/gpu_stubs/pygame: see the set-up below.
# The wheels (.whl/, Python 3.12, manylinux x86-64): `python benchmarks/gpu_wheels.py --check`
# downloads the 17 it needs (gymnasium, minigrid, metaworld, mujoco, Box2D, dm_control, shimmy,
# MinAtar, minari, tyro and their small dependencies) and slims Meta-World's textures and
# dm_control's unused assets: 18 MiB, which with the repository (~19 MB) and .gpucache (~5 MB)
# stays under the 64 MiB a call may carry.
#
# A dry run of the plumbing on a 2-core CPU machine (toy sizes, ~3 min):
#
#     OUT=/tmp/gs PYTHON=.venv/bin/python BENCH_DEVICE=cpu SUITE_CORES=0-1 SESSION_END_S=200 \
#     BENCH_TRAIN="--train-presets gato-tiny --batch-size 2 --seconds 2 --context-len 256" \
#     BENCH_ACT="--act-preset gato-tiny --act-batch-sizes 1 --act-steps 4 --seconds 1" \
#     SUITE_ARGS="--tasks classic/CartPole-v1,babyai/GoToObj,text/qa --train.preset gato-tiny
#     --train.device cpu --train.batch-size 4 --train.context-len 256 --collect.episodes 10
#     --collect.random-episodes 10 --eval.episodes 4 --eval.device cpu --budget-eval-minutes 0.7"
#     bash benchmarks/gpu_session.sh
set -uo pipefail
SECONDS=0
: "${OUT:?set OUT to the folder that receives the results}"
PYTHON=${PYTHON:-python3}
END_S=${SESSION_END_S:-575}
DEVICE=${BENCH_DEVICE:-cuda}
SUITE_CORES=${SUITE_CORES:-2-15}
BENCH_CORES=${BENCH_CORES:-0,1}
BENCH_TRAIN=${BENCH_TRAIN:---train-presets gato-79m gato-364m --batch-size 32 --seconds 8}
BENCH_ACT=${BENCH_ACT:---act-batch-sizes 1 64 512 --act-steps 40 --seconds 8}
export PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-disable}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
echo "== gpu_session.sh: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo "${OPENGATO_COMMIT:-?}")"

# --- set-up: the packages the image lacks (the suite script would do the same, counted in its
# total: here it is counted too, as the suite's total is what is left of END_S)
if ! $PYTHON -c "import gymnasium, metaworld, minari, tyro, mujoco, Box2D" 2>/dev/null; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# pygame's 12 MB wheel does not fit the carry limit: minigrid and Gymnasium's Box2D envs import
# it but only draw windows with it, so an import stub stands in (benchmarks/gpu_stubs; any use
# fails loudly).
if ! $PYTHON -c "import pygame" 2>/dev/null; then
    export PYTHONPATH=$PWD/benchmarks/gpu_stubs${PYTHONPATH:+:$PYTHONPATH}
    echo "pygame: the import stub in benchmarks/gpu_stubs (no window rendering here)"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PYTHON -c "import gymnasium, minigrid, metaworld, minari, tyro, mujoco, Box2D, opengato, torch
print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
# The H200 machines run under gVisor, where pinning to cores is not known to work: if `taskset`
# cannot pin (or NO_TASKSET is set, to try this path elsewhere), everything runs unpinned, the
# suite and the bench then sharing all cores, rather than nothing running at all.
if [ -n "${NO_TASKSET:-}" ] || ! taskset -c 0 true 2>/dev/null; then
    echo "== taskset cannot pin here: the suite and the bench share all the cores"
    taskset() { shift 2; "$@"; }
    export -f taskset
fi
BENCH=/tmp/gpu-bench
rm -rf "$BENCH" && mkdir -p "$BENCH/data" "$BENCH/cache" "$BENCH/out"
tar -xJf .gpucache/benchdata.txz -C "$BENCH/data" || exit 1
cp -r .gpucache/text "$BENCH/cache/"
echo "== set-up done after $SECONDS s"

# --- 1. the suite, in the background, on its cores
suite_min=$($PYTHON -c "print(round(($END_S - $SECONDS) / 60, 2))")
echo "== suite: ${suite_min} min total on cores $SUITE_CORES"
OUT="$OUT/suite" SUITE_TOTAL_MINUTES=$suite_min PYTHON=$PYTHON taskset -c "$SUITE_CORES" \
    bash benchmarks/suite_gpu.sh >"$BENCH/suite-console.log" 2>&1 &
suite_pid=$!

# --- 2. the bench on the other cores, stopped when the suite needs the GPU
bench_parts() {
    local b=(taskset -c "$BENCH_CORES" env OPENGATO_CACHE="$BENCH/cache" $PYTHON -m opengato.cli
        bench --data-dir "$BENCH/data" --device "$DEVICE" --dtypes bf16)
    # In the order of what the next step needs, as the window closes when the suite's collection
    # ends (about 2 minutes, if collection now scales with the cores). Issue 16's last target,
    # batch 512, is bound by the GPU's own work: first its profile and an interleaved A/B of the
    # attention kernels there; then acting (the baseline any change is measured against),
    # compiled training (never validly timed), the CUDA tests (ragged lanes, never run on a GPU;
    # the CUDA-graph one passed once, the second lease), eager training, the profile at batch 1.
    taskset -c "$BENCH_CORES" env OPENGATO_CACHE="$BENCH/cache" timeout --foreground 90 \
        $PYTHON benchmarks/profile_act.py bf16 "$DEVICE" 512 >"$BENCH/out/profile-act-512.txt" 2>&1
    taskset -c "$BENCH_CORES" env OPENGATO_CACHE="$BENCH/cache" timeout --foreground 90 \
        $PYTHON benchmarks/act_attention_ab.py 5 bf16 512 "$DEVICE" >"$BENCH/out/attention-ab-512.txt" 2>&1
    # shellcheck disable=SC2086  # BENCH_TRAIN/BENCH_ACT are lists of options
    "${b[@]}" --what act --act-device "$DEVICE" $BENCH_ACT --out "$BENCH/out/act.json"
    "${b[@]}" --what gemm train --compile True --warmup-steps 4 $BENCH_TRAIN \
        --out "$BENCH/out/train-compiled.json"
    taskset -c "$BENCH_CORES" env OPENGATO_CACHE="$BENCH/cache" timeout --foreground 180 \
        $PYTHON -m pytest -v -p no:cacheprovider --durations=0 \
        "tests/test_policy.py::test_ragged_lanes_act_as_a_lane_per_length[cuda]" \
        "tests/test_policy.py::test_envs_of_several_spaces_act_as_one_lane[None-cuda]" \
        tests/test_compiled.py::test_cuda_graphs_act_as_eager_decoding \
        "tests/test_compiled.py::test_cuda_graphs_of_ragged_lanes_act_as_eager_ones[cuda]" \
        tests/test_prefetch.py::test_pin_memory_keeps_the_batch \
        tests/test_train.py::test_training_forward_never_waits_for_the_gpu \
        >"$BENCH/out/cuda-tests.txt" 2>&1
    "${b[@]}" --what gemm train --compile False $BENCH_TRAIN --out "$BENCH/out/train-eager.json"
    taskset -c "$BENCH_CORES" env OPENGATO_CACHE="$BENCH/cache" timeout --foreground 60 \
        $PYTHON benchmarks/profile_act.py bf16 "$DEVICE" 1 >"$BENCH/out/profile-act.txt" 2>&1
}
setsid bash -c "$(declare -f bench_parts); BENCH=$BENCH BENCH_CORES=$BENCH_CORES \
    DEVICE=$DEVICE PYTHON=$PYTHON BENCH_TRAIN='$BENCH_TRAIN' BENCH_ACT='$BENCH_ACT' bench_parts" \
    >"$BENCH/out/bench.log" 2>&1 &
bench_pid=$!
# `timeout` runs --foreground above: without it, it moves into a process group of its own,
# which the group kill missed (its case then kept the GPU through the suite's calibration). The
# session's processes are killed too, by session id, in case any left the group.
stop_bench() {
    kill -INT -- "-$bench_pid" 2>/dev/null; sleep 2; kill -KILL -- "-$bench_pid" 2>/dev/null
    pkill -KILL -s "$bench_pid" 2>/dev/null
}
while kill -0 "$bench_pid" 2>/dev/null; do
    if grep -q '=== \[2/4\]' "$OUT/suite/suite.log" 2>/dev/null; then
        stop_bench
        echo "== bench stopped at $SECONDS s: the suite reached stage 2 (the GPU is its own now)"
        # the suite's env workers may take the bench's cores for evaluation
        taskset -a -p -c "${ALL_CORES:-0-15}" "$suite_pid" >/dev/null 2>&1
        pgrep -g "$(ps -o pgid= -p $$ | tr -d ' ')" | xargs -r -n1 taskset -a -p -c \
            "${ALL_CORES:-0-15}" >/dev/null 2>&1
        break
    fi
    if [ "$SECONDS" -ge $((END_S - 15)) ]; then  # the suite never got there: pack what there is
        stop_bench
        echo "== bench stopped at $SECONDS s: the session's end is near"
        break
    fi
    sleep 1
done
echo "== bench over after $SECONDS s"
for f in "$BENCH"/out/*.md; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done
wait "$suite_pid"
echo "== suite exited with $? after $SECONDS s in all"

# --- what comes back: at most 8 files (suite/: 7 less the figures, which go in a tarball)
(cd "$OUT/suite" && ls figure5*.png >/dev/null 2>&1 && tar -czf figures.tar.gz figure5*.png \
    && rm -f figure5*.png)
cp "$BENCH/suite-console.log" "$BENCH/out/" 2>/dev/null
tar -czf "$OUT/bench.tar.gz" -C "$BENCH/out" .
ls -la "$OUT" "$OUT/suite"
echo "== still running (would share the GPU with a second call):"
ps -eo pid,pgid,stat,etime,args | awk '$3 !~ /^Z/' | grep -E "[p]ython|[o]pengato" | head -20 \
    || echo "(none)"  # zombies left out; nothing found is no failure of the session
