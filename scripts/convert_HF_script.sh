#!/usr/bin/env bash
# Convert a MERT fairseq checkpoint to a verified Hugging Face folder (original MERT call form).
#
#   bash scripts/convert_HF_script.sh default mert mert_base  CKPT.pt [OUT_DIR]
#   bash scripts/convert_HF_script.sh default mert mert_large CKPT.pt [OUT_DIR]
#
# mert_base expects the 95M layout (post-LN encoder, group-norm CNN), mert_large the 330M layout (pre-LN,
# layer-norm CNN); a checkpoint of the other layout is refused. OUT_DIR defaults to CKPT without .pt + _hf.
# Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 4 ] && [ $# -le 5 ] || usage
TYPE=$1; MODEL=$2; SIZE=$3; CKPT=$4
OUT=${5:-${CKPT%.pt}_hf}
[ "$TYPE" = default ] || echo "note: first argument '$TYPE' is ignored (only 'default' exists)" >&2
[ "$MODEL" = mert ] || { echo "error: model '$MODEL' is not supported (expected 'mert')" >&2; exit 2; }
case "$SIZE" in mert_base|mert_large) ;; *) echo "error: size '$SIZE': expected mert_base or mert_large" >&2; exit 2;; esac
[ -f "$CKPT" ] || { echo "error: checkpoint $CKPT not found" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3; fi

exec "$PY" "$REPO/scripts/convert_to_hf.py" --checkpoint "$CKPT" --out-dir "$OUT" --expect "$SIZE"
