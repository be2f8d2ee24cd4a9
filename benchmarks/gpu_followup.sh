#!/usr/bin/env bash
# The GPU measurements `gpu_session.sh` leaves for a second, shorter call on the same warm machine
# (its bench only has the suite's collection window): in the order of what is still missing,
# each under a limit, every result written to $OUT as soon as it is there.
#
#   0. the CPU demo's checkpoint answering the suite's held-out questions (~10 s), and the
#      suite's answers against its, question by question (`opengato report`, qa-report/);
#   1. compiled training, gato-79m and gato-364m (issue 13's MFU targets; never validly timed),
#      each block compiled (`--compile-scope blocks`, the default: one graph, compiled once);
#   2. where an eager training step's time goes, gato-79m (benchmarks/profile_train.py), then
#      the suite's own gato-20m at its 64 x 1024 (the second lease's suite calibrated it at
#      0.079 s a step; gato-79m's step at 32 x 1024, 1.6x the FLOPs, took as long: why?);
#   3. gato-1.18b eager at batch 8 (issue 13: "report gato-1.18b too"; fp32 master weights and
#      AdamW state, bf16 autocast, no sharding: peak memory says whether it fits in 80 GB);
#   4. 640 BabyAI envs acting as lanes per length or one ragged lane (benchmarks/ragged_lanes.py).
#   5. the 24 tasks that share no spaces (classic, MuJoCo, DM Control, MinAtar) x 5 episodes,
#      mixed (`--mix-spaces`, the suite's lanes) eager against CUDA graphs (`--weights
#      compiled`, what the suite evaluates with on a GPU), with the suite's checkpoint when
#      there is one (benchmarks/eval_throughput.py, no prompts);
#   6. gato-79m compiled as one whole graph (`--compile-scope model`), against 1;
#   7. the CUDA tests of the graph and ragged paths (gpu_session.sh's bench window may close
#      before it reaches them);
#   8. the suite's gato-20m compiled at 64 x 1024 (would `opengato suite --train.compile` train
#      more tokens in its minutes?).
#
# On the GPU machine, from the repository root, after `gpu_session.sh` in the same lease (its
# packages in /tmp/site, its bench data in /tmp/gpu-bench), or alone with the same carry. Send
# it at once when the session returns (prepared beforehand, FOLLOWUP_S = the budget left less
# ~60 s): a machine idle for 30 s goes back, and no new one starts with under 4 minutes left.
#
#     bash benchmarks/gpu_followup.sh
#
# Environment: OUT (required); FOLLOWUP_S (240: seconds for all of it); PYTHON (python3);
# DEVICE (cuda); PRESETS (gato-79m gato-364m) and BATCH (32) of the compiled cases; BIG
# (gato-1.18b) and BIG_BATCH (8); CTX (1024). A dry run on the CPU (~2 min):
#
#     OUT=/tmp/gf PYTHON=.venv/bin/python DEVICE=cpu FOLLOWUP_S=150 PRESETS=gato-tiny BATCH=2 \
#     BIG=gato-tiny BIG_BATCH=2 CTX=256 bash benchmarks/gpu_followup.sh
set -uo pipefail
SECONDS=0
: "${OUT:?set OUT to the folder that receives the results}"
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
LIMIT=${FOLLOWUP_S:-240}
PRESETS=${PRESETS:-gato-79m gato-364m}
BIG=${BIG:-gato-1.18b}
BATCH=${BATCH:-32}
BIG_BATCH=${BIG_BATCH:-8}
SUITE_PRESET=${SUITE_PRESET:-gato-20m}
SUITE_BATCH=${SUITE_BATCH:-64}
CTX=${CTX:-1024}
# At most 8 files come back from $OUT: everything is written under $W and packed into
# $OUT/followup.tgz after every step (so a cut call keeps what finished), beside followup.log.
W=${FOLLOWUP_DIR:-/tmp/gpu-followup}
rm -rf "$W"; mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/followup.log") 2>&1
pack() { tar -czf "$OUT/.followup.tgz" -C "$W" . 2>/dev/null && mv -f "$OUT/.followup.tgz" "$OUT/followup.tgz"; }
trap pack EXIT
echo "== gpu_followup.sh: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo "${OPENGATO_COMMIT:-?}")"
# Anything still on the GPU from the first call? (The second lease's follow-up ran its compiled
# training and the CUDA-graph test far slower than expected, on what should have been an idle GPU.)
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>/dev/null
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv 2>/dev/null
BENCH=/tmp/gpu-bench
if [ ! -d "$BENCH/data/minari" ]; then  # alone: the set-up gpu_session.sh does
    if ! $PYTHON -c "import gymnasium, metaworld, minari, tyro" 2>/dev/null; then
        $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 1
    fi
    mkdir -p "$BENCH/data" "$BENCH/cache" && tar -xJf .gpucache/benchdata.txz -C "$BENCH/data" \
        && cp -r .gpucache/text "$BENCH/cache/" || exit 1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
$PYTHON -c "import pygame" 2>/dev/null || export PYTHONPATH=$PWD/benchmarks/gpu_stubs${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OPENGATO_CACHE="$BENCH/cache" PYTHONUNBUFFERED=1 \
    MUJOCO_GL=${MUJOCO_GL:-disable}  # the image has no EGL loader (DM Control would default to egl)
left() { echo $((LIMIT - SECONDS)); }
cap() { local l; l=$(left); echo $((l < $1 ? l : $1)); }  # a case's limit: at most $1 s
bench=($PYTHON -m opengato.cli bench --data-dir "$BENCH/data" --device "$DEVICE" --dtypes bf16
    --context-len "$CTX")

# 0. The CPU demo's gato-1m on the suite's held-out questions, built by this machine's Python (its
# pairs are not the 3.11 VM's): what the suite's answers are compared with (issue 13). The
# checkpoint is carried in .gpucache/demo-ckpt (config.json, model.safetensors, text.model).
SUITE_DATA=${SUITE_DATA:-/tmp/opengato-suite}/data
if [ -f .gpucache/demo-ckpt/model.safetensors ] && [ -f "$SUITE_DATA/text/qa.parquet" ]; then
    timeout 60 $PYTHON -m opengato.cli eval .gpucache/demo-ckpt --episodes 0 --qa --no-captions \
        --device "$DEVICE" --data-dir "$SUITE_DATA" --out "$W/demo-qa.json" >"$W/demo-qa.log" 2>&1
    pack
fi
SUITE_EVAL=${SUITE_DATA%/data}/run/eval.json
if [ -f "$W/demo-qa.json" ] && [ -f "$SUITE_EVAL" ]; then  # "measurably better": the paired CI
    timeout 30 $PYTHON -m opengato.cli report "$W/demo-qa.json" "$SUITE_EVAL" \
        --names cpu-demo suite --no-gifs --out-dir "$W/qa-report" >"$W/qa-report.log" 2>&1
    pack
fi
for preset in $PRESETS; do  # one JSON each: a case cut by the limit loses only itself
    [ "$(left)" -gt 30 ] || break
    # capped: the second lease's gato-79m case had not finished after 185 s, and uncapped it
    # would take every later step's time
    timeout "$(cap 150)" "${bench[@]}" --what train --compile True --warmup-steps 4 \
        --train-presets "$preset" --batch-size "$BATCH" --seconds 8 --out "$W/train-compiled-$preset.json"
    pack
done
if [ "$(left)" -gt 30 ]; then
    timeout "$(left)" $PYTHON benchmarks/profile_train.py "${PRESETS%% *}" "$BATCH" "$DEVICE" 5 \
        >"$W/profile-train.txt" 2>&1
    pack
fi
if [ "$(left)" -gt 30 ]; then
    timeout "$(left)" $PYTHON benchmarks/profile_train.py "$SUITE_PRESET" "$SUITE_BATCH" "$DEVICE" 5 \
        "$CTX" >"$W/profile-train-suite.txt" 2>&1
    pack
fi
if [ "$(left)" -gt 30 ]; then
    timeout "$(left)" "${bench[@]}" --what train --compile False --train-presets "$BIG" \
        --batch-size "$BIG_BATCH" --seconds 8 --out "$W/train-eager-big.json"
    pack
fi
if [ "$(left)" -gt 60 ]; then  # ragged lanes on the GPU: forward count against time
    timeout "$(left)" $PYTHON benchmarks/ragged_lanes.py 640 gato-20m 2 1 "$DEVICE" \
        >"$W/ragged-lanes.md" 2>"$W/ragged-lanes.log"
    pack
fi
CKPT=$(ls -d "${SUITE_DATA%/data}"/run/train/step_* 2>/dev/null | tail -1)
if [ "$(left)" -gt 120 ]; then  # mixed lanes, eager against CUDA graphs, on the GPU
    timeout "$(left)" $PYTHON benchmarks/eval_throughput.py --tasks "classic,mujoco,dmc,minatar,-heldout" \
        --episodes 5 --paths mixed,graphs --repeats 1 --device "$DEVICE" --collect 0 \
        --checkpoint "${CKPT:-random:gato-20m}" --env-workers "$(nproc)" --concurrent-tasks 32 \
        --group-tasks 32 --data-dir "${SUITE_DATA}" --out "$W/eval-mixed.md" >"$W/eval-mixed.log" 2>&1
    pack
fi
if [ "$(left)" -gt 60 ]; then  # the other compile scope, the whole model as one graph: the A/B
    timeout "$(left)" "${bench[@]}" --what train --compile True --compile-scope model \
        --warmup-steps 4 --train-presets "${PRESETS%% *}" --batch-size "$BATCH" --seconds 8 \
        --out "$W/train-compiled-model-${PRESETS%% *}.json"
    pack
fi
if [ "$(left)" -gt 60 ] && [ "$DEVICE" = cuda ]; then  # the CUDA tests, if the session's bench
    # window closed before it reached them: CUDA graphs of ragged lanes, as the suite evaluates
    timeout "$(left)" $PYTHON -m pytest -v -p no:cacheprovider --durations=0 \
        "tests/test_compiled.py::test_cuda_graphs_of_ragged_lanes_act_as_eager_ones[cuda]" \
        "tests/test_policy.py::test_ragged_lanes_act_as_a_lane_per_length[cuda]" \
        "tests/test_policy.py::test_envs_of_several_spaces_act_as_one_lane[None-cuda]" \
        tests/test_compiled.py::test_cuda_graphs_act_as_eager_decoding >"$W/cuda-tests.txt" 2>&1
    pack
fi
if [ "$(left)" -gt 60 ]; then  # the suite's model compiled, at the suite's batch
    timeout "$(left)" "${bench[@]}" --what train --compile False True --warmup-steps 4 \
        --train-presets "$SUITE_PRESET" --batch-size "$SUITE_BATCH" --seconds 8 \
        --out "$W/train-suite-preset.json"
    pack
fi
echo "== gpu_followup.sh done after $SECONDS s"
pack
ls -la "$OUT" "$W"
