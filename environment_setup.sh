#!/usr/bin/env bash
# One-command setup: creates .venv (Python 3.11) with the pinned MERT stack and this project
# installed editable. Idempotent: when nothing changed since the last successful run it only
# verifies the imports and exits within seconds.
#
#   bash environment_setup.sh              # create/update ./.venv
#   VENV=/path/to/venv bash environment_setup.sh
#   PYTHON=python3.11 bash environment_setup.sh
#
# apex (fused LayerNorm/Adam for GPU clusters) is an optional extra: it needs a CUDA toolkit
# build from the NVIDIA/apex sources and is never installed here. fairseq runs fp16/bf16
# without it. Never `pip install apex`: that PyPI name is an unrelated package.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.mert_setup_stamp"

log() { printf '[environment_setup] %s\n' "$*"; }

command -v "$PYTHON" >/dev/null 2>&1 || { echo "error: $PYTHON not found (set PYTHON=...)" >&2; exit 1; }

# The stamp is a hash of everything that decides what gets installed.
want_stamp="$(cat requirements/requirements.txt requirements/fairseq.txt pyproject.toml \
  "$ROOT/environment_setup.sh" | sha256sum | cut -d' ' -f1)"

check_imports() {
  "$VENV/bin/python" - <<'PY'
import fairseq, nnAudio, encodec, soundfile, transformers, mert_fairseq  # noqa: F401
PY
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] && check_imports 2>/dev/null; then
  log "up to date: $VENV"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

log "installing the pinned stack (torch 2.9.1 is a large download on first run)"
"${PIP[@]}" install -r requirements/requirements.txt

# fairseq-fixed is built from its sdist against the torch/numpy/cython installed above.
if ! "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
  log "building fairseq-fixed (about 2 minutes)"
  "${PIP[@]}" install --no-deps --no-build-isolation -r requirements/fairseq.txt
fi

log "installing mert-fairseq (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e .

check_imports
echo "$want_stamp" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
