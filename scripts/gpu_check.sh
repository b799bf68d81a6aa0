#!/usr/bin/env bash
# One command for a GPU box: benchmark (ours vs reference, fp16/bf16, MFU), 150 updates of the 95M
# config in fp16 and bf16 (fairseq adam and adamw_torch) and 20 of the 330M config through
# scripts/run_training.sh on demo data with EnCodec labels, the GPU tests, and a check that every
# training process exits within 10 s of its last log line. One table (runs/gpu_check/gpu_check.md)
# and JSON (runs/gpu_check/gpu_check.json).
#   bash scripts/gpu_check.sh                 # on a GPU (about 10 minutes on one H100)
#   bash scripts/gpu_check.sh --cpu-smoke     # tiny sizes on the CPU: a dry run of this script
#   bash scripts/gpu_check.sh --out-dir DIR --num-workers 8
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
rc=0
"$PY" -m mert_fairseq.perf.gpu_check "$@" || rc=$?
if [[ " $* " != *" --cpu-smoke "* ]]; then
  "$PY" -m pytest -q -m gpu tests/test_gpu.py || rc=1
fi
exit $rc
