#!/usr/bin/env bash
# The test suite under the GPU image's PyTorch, on this CPU, before a lease spends its minutes on
# it. The GPU machines run their own image's torch 2.11.0 (device KINDS.md), not the 2.13.0 this
# project pins, and nothing can be installed there but the wheels gpu_session.sh carries. An API
# that 2.11 lacks fails there only when it is reached: FSDP's set_reduce_scatter_unused_params
# (torch >= 2.12) did, found this way (benchmarks/RESULTS.md, "The GPU image's torch on a CPU").
#
#     bash benchmarks/gpu_twin.sh [pytest args]      # ~1 min to set up, then the suite (~5 min)
#
# A venv at $TWIN (/tmp/venv-gpu-twin) with PyPI's torch 2.11.0 (a CUDA build, ~4.7 GB, which runs
# on the CPU), sentencepiece and safetensors at the image's versions, and the project's other pins.
# Not the image itself: its Python is 3.12 and its NumPy 2.5.2, which needs Python 3.12; this
# machine has 3.11, so NumPy stays at the pinned 2.4.6.
set -euo pipefail
cd "$(dirname "$0")/.."
TWIN=${TWIN:-/tmp/venv-gpu-twin}
if [ ! -x "$TWIN/bin/python" ] || ! "$TWIN/bin/python" -c "import torch, gymnasium, pytest" 2>/dev/null; then
    python3.11 -m venv "$TWIN"
    "$TWIN/bin/pip" install -q --upgrade pip
    printf 'torch==2.11.0\nnumpy==2.4.6\nsentencepiece==0.2.2\nsafetensors==0.8.0\n' >"$TWIN/pins.txt"
    "$TWIN/bin/pip" install -q -c "$TWIN/pins.txt" torch numpy sentencepiece safetensors
    # the project's dependencies and extras, every pin but the four above kept (the project
    # itself is not installed: it runs from this checkout, on PYTHONPATH)
    "$TWIN/bin/python" - "$TWIN/reqs.txt" <<'EOF'
import sys, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
skip = ("torch", "numpy", "sentencepiece", "safetensors")
deps = [d for d in p["dependencies"] if not d.startswith(skip)]
deps += [d for extra in ("dev", "serve", "experts") for d in p["optional-dependencies"][extra]]
open(sys.argv[1], "w").write("\n".join(deps) + "\n")
EOF
    "$TWIN/bin/pip" install -q -c "$TWIN/pins.txt" -r "$TWIN/reqs.txt"
fi
"$TWIN/bin/python" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"
PYTHONPATH=$PWD MUJOCO_GL=${MUJOCO_GL:-egl} "$TWIN/bin/python" -m pytest -q -p no:cacheprovider "$@"
