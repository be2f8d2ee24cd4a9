#!/usr/bin/env bash
# What a GPU lease carries that git does not, made in one go on this machine (no GPU needed), so
# that a session lent a GPU can start its first `run` soon: .whl/ (the wheels the GPU image
# lacks) and .gpucache/ (the bench's data, the text model, the CPU demo's checkpoint), as
# benchmarks/gpu_session.sh's header describes them. A fresh checkout has neither: both are
# ignored (.gitignore), so the device call names them in `carry` [".whl", ".gpucache"].
#
#     bash benchmarks/gpu_prepare.sh       # ~2 min; with DEMO=1 also `make demo` (~16 min more)
#
# The demo checkpoint is only for gpu_followup.sh's paired comparison of answers (the suite's
# against the CPU demo's, question by question); without one that step is skipped and says so.
# Ends by printing the sizes: the working tree, .whl and .gpucache must stay under the 64 MiB a
# device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "no $PY: run 'make setup' first"; exit 1; }
CACHE=$(mktemp -d /tmp/gpu-prepare-cache.XXXX)  # the text model is built here, then copied
DATA=runs/bench/data

echo "== wheels into .whl/ (checked: every Meta-World and DMC task built from them)"
$PY benchmarks/gpu_wheels.py --check

echo "== the bench's data root (the default tasks, 20 demonstrations each) and the text model"
MUJOCO_GL=${MUJOCO_GL:-egl} OPENGATO_CACHE=$CACHE $PY -m opengato.cli bench --what data \
    --data-dir "$DATA"
mkdir -p .gpucache
tar -cJf .gpucache/benchdata.txz -C "$DATA" minari vision text corpora.json scores.json
rm -rf .gpucache/text && cp -r "$CACHE/text" .gpucache/text
rm -rf "$CACHE"

if [ -n "${DEMO:-}" ] && ! ls -d runs/demo/train/step_* >/dev/null 2>&1; then
    make demo
fi
ckpt=$(ls -d runs/demo/train/step_* 2>/dev/null | sort | tail -1 || true)
if [ -n "$ckpt" ]; then
    rm -rf .gpucache/demo-ckpt && mkdir -p .gpucache/demo-ckpt
    cp "$ckpt"/{config.json,model.safetensors,text.model} .gpucache/demo-ckpt/
    echo "== the CPU demo's checkpoint: $ckpt (its training state left out)"
else
    echo "== no CPU demo checkpoint (runs/demo/train/step_*): gpu_followup.sh will skip the"
    echo "   answers' comparison; DEMO=1 makes one with 'make demo' (~16 min)"
fi
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
whl=$(du -sb .whl | cut -f1)
gpc=$(du -sb .gpucache | cut -f1)
echo "== carried: tracked files $((tree / 1048576)) MiB + .whl $((whl / 1048576)) MiB" \
    "+ .gpucache $((gpc / 1048576)) MiB = $(((tree + whl + gpc) / 1048576)) MiB of 64"
[ $((tree + whl + gpc)) -lt $((64 * 1048576)) ] || { echo "over the limit"; exit 1; }
