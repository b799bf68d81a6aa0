#!/usr/bin/env bash
# One-command setup: creates .venv (Python 3.11) with the pinned MERT stack and this project
# installed editable. Idempotent: when nothing changed since the last successful run it only
# verifies the imports and exits within seconds.
#
#   bash environment_setup.sh              # create/update ./.venv
#   VENV=/path/to/venv bash environment_setup.sh
#   PYTHON=python3.11 bash environment_setup.sh
#
# Cluster images (a CUDA torch already installed, often no internet):
#   SYSTEM_TORCH=1 PYTHON=/image/python bash environment_setup.sh
#       keep the image's torch/torchaudio (nothing of torch is downloaded): .venv is made with
#       --system-site-packages from that interpreter; when it is itself a virtual environment, its
#       site-packages are added to .venv by a .pth file. Python 3.12+: fairseq-fixed's prebuilt wheel;
#       3.11: built from source against the image's torch.
#   WHEELS=DIR bash environment_setup.sh   (with or without SYSTEM_TORCH=1)
#       install from DIR only (pip --no-index --find-links DIR); fill DIR on a machine with internet
#       with `bash scripts/download_wheels.sh DIR PYTHON_VERSION`.
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
SYSTEM_TORCH="${SYSTEM_TORCH:-0}"
WHEELS="${WHEELS:-}"

log() { printf '[environment_setup] %s\n' "$*"; }

command -v "$PYTHON" >/dev/null 2>&1 || { echo "error: $PYTHON not found (set PYTHON=...)" >&2; exit 1; }
[[ "$SYSTEM_TORCH" == 0 || "$SYSTEM_TORCH" == 1 ]] || { echo "error: SYSTEM_TORCH must be 0 or 1" >&2; exit 1; }
if [[ -n "$WHEELS" ]]; then
  [[ -d "$WHEELS" ]] || { echo "error: WHEELS=$WHEELS is not a directory" >&2; exit 1; }
  WHEELS="$(cd "$WHEELS" && pwd)"
fi
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

# The stamp is a hash of everything that decides what gets installed.
want_stamp="$( (cat requirements/requirements.txt requirements/fairseq.txt pyproject.toml "$ROOT/environment_setup.sh"
  echo "SYSTEM_TORCH=$SYSTEM_TORCH WHEELS=$WHEELS PYTHON=$(command -v "$PYTHON") $PYVER") | sha256sum | cut -d' ' -f1)"

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
  if [[ "$SYSTEM_TORCH" == 1 ]]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
    # venv's bundled setuptools (3.11) would hide the image's; the requirements reinstall it if needed
    "$VENV/bin/python" -m pip uninstall -y -q setuptools >/dev/null 2>&1 || true
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
PIP_SOURCE=()
[[ -n "$WHEELS" ]] && PIP_SOURCE=(--no-index --find-links "$WHEELS") && log "offline: installing from $WHEELS only"
REQS=requirements/requirements.txt

if [[ "$SYSTEM_TORCH" == 1 ]]; then
  # An image python that is itself a venv: --system-site-packages shows its base interpreter's
  # packages, not the image env's. Add the image env's site-packages (and their .pth files).
  "$PYTHON" - "$VENV" <<'PY'
import os, site, sys
venv = sys.argv[1]
if sys.prefix != sys.base_prefix:  # the image python is a virtual environment
    import sysconfig
    purelib = sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv})
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    with open(os.path.join(purelib, "_mert_image_site.pth"), "w") as f:
        f.write("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n")
    print(f"[environment_setup] image python is a venv: {', '.join(dirs)} visible through _mert_image_site.pth")
PY
  "$VENV/bin/python" -c "import torch, torchaudio" 2>/dev/null || {
    echo "error: SYSTEM_TORCH=1 but torch/torchaudio do not import with $PYTHON" >&2; exit 1; }
  # Pin the image's torch and torchaudio: pip may not replace them.
  "$VENV/bin/python" - > "$VENV/mert_system_torch.txt" <<'PY'
from importlib.metadata import version
print(f"torch=={version('torch')}\ntorchaudio=={version('torchaudio')}")
PY
  log "keeping the image's $(tr '\n' ' ' < "$VENV/mert_system_torch.txt")"
  grep -vE '^\s*(torch|torchaudio)\s*([=<>!~;]|$)' requirements/requirements.txt > "$VENV/mert_requirements.txt"
  REQS=("$VENV/mert_requirements.txt" -c "$VENV/mert_system_torch.txt")
  log "installing the pinned stack around the image's torch"
else
  log "installing the pinned stack (torch 2.9.1 is a large download on first run)"
fi
"${PIP[@]}" install "${PIP_SOURCE[@]}" -r "${REQS[@]}"

# fairseq-fixed: the prebuilt wheel where one exists (Python 3.12: no build); for 3.11 it is built
# from its sdist against the torch/numpy/cython installed above.
if ! "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
  if "${PIP[@]}" install "${PIP_SOURCE[@]}" --no-deps --only-binary=fairseq-fixed -r requirements/fairseq.txt 2>/dev/null; then
    log "installed fairseq-fixed from its prebuilt wheel (Python $PYVER)"
  else
    log "building fairseq-fixed from source (about 2 minutes)"
    "${PIP[@]}" install "${PIP_SOURCE[@]}" --no-deps --no-build-isolation -r requirements/fairseq.txt
  fi
fi

log "installing mert-fairseq (editable)"
"${PIP[@]}" install "${PIP_SOURCE[@]}" --no-deps --no-build-isolation -e .

check_imports
echo "$want_stamp" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
