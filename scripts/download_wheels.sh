#!/usr/bin/env bash
# Fill DIR with every wheel that environment_setup.sh installs besides torch/torchaudio, for one Python
# version on manylinux x86_64, so that a machine without internet can run
#   WHEELS=DIR [SYSTEM_TORCH=1 PYTHON=/image/python] bash environment_setup.sh
#
#   bash scripts/download_wheels.sh DIR [PYTHON_VERSION]     # PYTHON_VERSION default 3.11, e.g. 3.12
#   WITH_TORCH=1 bash scripts/download_wheels.sh DIR 3.11    # also torch/torchaudio and their CUDA wheels
#
# Run it on any Linux machine with internet and a python >= 3.9 with pip (PIP_PYTHON, default: this
# repo's .venv python, else python3). Packages published only as source (antlr4-python3-runtime, encodec,
# fairscale) are built into pure-python wheels here. fairseq-fixed: the prebuilt wheel where one exists
# (cp312); for 3.11 its source archive, which environment_setup.sh builds offline against the installed torch.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:?usage: bash scripts/download_wheels.sh DIR [PYTHON_VERSION]}"
PYVER="${2:-3.11}"
[[ "$PYVER" =~ ^3\.[0-9]+$ ]] || { echo "error: PYTHON_VERSION must look like 3.11 (got $PYVER)" >&2; exit 2; }
if [[ -n "${PIP_PYTHON:-}" ]]; then PY="$PIP_PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PIP=("$PY" -m pip --disable-pip-version-check)
TARGET=(--python-version "$PYVER" --implementation cp --only-binary=:all:
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
log() { printf '[download_wheels] %s\n' "$*"; }
skip_torch() { [[ "${WITH_TORCH:-0}" == 1 ]] && return 1; [[ "$1" =~ ^(torch|torchaudio|triton|nvidia-.*)$ ]]; }

# The requirement list, without torch/torchaudio unless WITH_TORCH=1.
if [[ "${WITH_TORCH:-0}" == 1 ]]; then cp "$ROOT/requirements/requirements.txt" "$WORK/reqs.txt"
else grep -vE '^\s*(torch|torchaudio)\s*([=<>!~;]|$)' "$ROOT/requirements/requirements.txt" > "$WORK/reqs.txt"; fi

# 1. Packages that exist only as source archives: resolve for this interpreter, build those into wheels.
log "resolving requirements (metadata only)"
"${PIP[@]}" install -q --dry-run --ignore-installed --prefer-binary --report "$WORK/host.json" -r "$WORK/reqs.txt"
"$PY" - "$WORK/host.json" > "$WORK/sdists.txt" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    url = item["download_info"]["url"]
    if not url.endswith(".whl"):
        print(f"{item['metadata']['name']}=={item['metadata']['version']}")
PY
if [[ -s "$WORK/sdists.txt" ]]; then
  log "building wheels of source-only packages: $(tr '\n' ' ' < "$WORK/sdists.txt")"
  "${PIP[@]}" wheel -q --no-deps -w "$DIR" -r "$WORK/sdists.txt"
  for w in "$DIR"/*.whl; do
    case "$w" in *-none-any.whl|*manylinux*|*cp3*) ;; *) log "warning: $w is not a portable wheel" ;; esac
  done
fi

# 2. Resolve the whole set for the target Python and platform (binary wheels only; the wheels built
#    above are found in DIR), then download everything except torch and its CUDA wheels.
log "resolving for Python $PYVER manylinux x86_64"
"${PIP[@]}" install -q --dry-run --ignore-installed --target "$WORK/target" "${TARGET[@]}" \
  --find-links "$DIR" --report "$WORK/target.json" -r "$WORK/reqs.txt"
"$PY" - "$WORK/target.json" > "$WORK/pins.txt" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(f"{item['metadata']['name'].lower()}=={item['metadata']['version']}")
PY
: > "$WORK/download.txt"
while read -r pin; do skip_torch "${pin%%==*}" || echo "$pin" >> "$WORK/download.txt"; done < "$WORK/pins.txt"
log "downloading $(wc -l < "$WORK/download.txt") wheels into $DIR"
"${PIP[@]}" download -q --no-deps "${TARGET[@]}" --find-links "$DIR" -d "$DIR" -r "$WORK/download.txt"

# 3. fairseq-fixed (installed with --no-deps): its wheel for this Python, else its source archive.
FAIRSEQ="$(grep -vE '^\s*(#|$)' "$ROOT/requirements/fairseq.txt" | head -1)"
if "${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d "$DIR" "$FAIRSEQ" 2>/dev/null; then
  log "$FAIRSEQ: prebuilt wheel for Python $PYVER"
else
  log "$FAIRSEQ: no wheel for Python $PYVER; source archive (built offline by environment_setup.sh)"
  "${PIP[@]}" download -q --no-deps --no-binary=:all: -d "$DIR" "$FAIRSEQ"
fi
log "done: $(ls "$DIR" | wc -l) files, $(du -sh "$DIR" | cut -f1) in $DIR"
log "offline setup: WHEELS=$DIR SYSTEM_TORCH=1 PYTHON=/path/to/python$PYVER bash environment_setup.sh"
