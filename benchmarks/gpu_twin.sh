#!/usr/bin/env bash
# The test suite as the GPU machine's software would run it, on this CPU, before a lease spends
# its minutes finding out. The GPU machines run their own image (device KINDS.md): Python 3.12,
# torch 2.11.0 (the project pins 2.13.0), NumPy 2.5.2 (the project pins 2.4.6), sentencepiece
# 0.2.2 and safetensors 0.8.0; nothing can be installed there but the wheels that
# gpu_session.sh carries in .whl/ (gymnasium, Meta-World with its textures slimmed, dm_control
# without its unused assets, ...), installed with --no-deps; and pygame is the import stub in
# benchmarks/gpu_stubs. An API that one of these lacks fails there only when it is reached:
# FSDP's set_reduce_scatter_unused_params (torch >= 2.12) did, found this way (benchmarks/
# RESULTS.md, "The GPU image's torch on a CPU").
#
#     bash benchmarks/gpu_twin.sh [pytest args]     # ~1 min to set up (~5 GB), then ~6 min
#
# The twin: a venv at $TWIN (/tmp/venv-gpu-twin312) made by a Python 3.12 ($PY312, else
# python3.12 or pyenv's 3.12), with PyPI's torch 2.11.0 (a CUDA build, which runs on the CPU),
# the image's versions of NumPy, sentencepiece and safetensors, and the other image packages
# that opengato and the carried wheels import (at PyPI's versions: the image's are not all
# known); then .whl/ into $TWIN/site, as gpu_session.sh installs it. Not the image itself: Python 3.12.1 here against
# its 3.12.3, no CUDA, and no FastAPI (the serve tests are left out: the image has none).
#
# Deselected, because the twin differs from this VM in what they check, not in the code:
# - GIF recording (three tests record GIFs, which classic control draws with pygame): pygame is
#   a stub there; the suite records none;
# - the tokenised golden streams of metaworld-pixels: the slimmed wheel's textures are 8x
#   smaller, so its pixels differ (the suite's Meta-World tasks are the state ones).
#
# The lease's scripts under the twin: PYTHON=$TWIN/bin/python in gpu_session.sh's dry run (its
# header); with .whl/ installed by the script itself, as on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
TWIN=${TWIN:-/tmp/venv-gpu-twin312}
PY312=${PY312:-}  # a Python 3.12: on PATH, or one of pyenv's (whose shim runs only a selected one)
if [ -z "$PY312" ]; then
    for py in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        if "$py" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null; then
            PY312=$py
            break
        fi
    done
fi
[ -n "$PY312" ] || { echo "no Python 3.12 found (the GPU image's): set PY312"; exit 1; }
if [ ! -x "$TWIN/bin/python" ] || ! "$TWIN/bin/python" -c "import torch, numpy, pytest" 2>/dev/null; then
    "$PY312" -m venv "$TWIN"
    "$TWIN/bin/pip" install -q --upgrade pip
    printf 'torch==2.11.0\nnumpy==2.5.2\nsentencepiece==0.2.2\nsafetensors==0.8.0\n' >"$TWIN/pins.txt"
    "$TWIN/bin/pip" install -q -c "$TWIN/pins.txt" torch numpy sentencepiece safetensors \
        absl-py "etils[epath]" lxml pyparsing requests scipy protobuf h5py pyarrow matplotlib \
        seaborn imageio pillow scikit-image scikit-learn tensorboard tqdm cloudpickle \
        typing-extensions rich pytest hypothesis
fi
if [ ! -d "$TWIN/site" ] || [ .whl -nt "$TWIN/site" ]; then
    ls .whl/*.whl >/dev/null || { echo "no .whl/: python benchmarks/gpu_wheels.py --check"; exit 1; }
    rm -rf "$TWIN/site"
    "$TWIN/bin/pip" install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$TWIN/site" .whl/*.whl
fi
export PYTHONPATH=$TWIN/site:$PWD/benchmarks/gpu_stubs:$PWD
"$TWIN/bin/python" -c "import sys, torch, numpy, mujoco, gymnasium
print('python', sys.version.split()[0], 'torch', torch.__version__, 'numpy', numpy.__version__,
      'mujoco', mujoco.__version__, 'gymnasium', gymnasium.__version__)"
MUJOCO_GL=${MUJOCO_GL:-egl} "$TWIN/bin/python" -m pytest -q -p no:cacheprovider \
    --ignore tests/test_serve.py --ignore tests/test_serve_browser.py \
    --deselect tests/test_demo_bench.py::test_demo_runs_end_to_end_and_repeats_exactly \
    --deselect tests/test_evaluate.py::test_env_errors_mark_episodes_failed \
    --deselect tests/test_evaluate_parallel.py::test_env_workers_and_concurrent_tasks_change_no_result \
    --deselect tests/test_golden.py::test_every_builtin_task_tokenizes_as_recorded "$@"
