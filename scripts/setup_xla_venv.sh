#!/usr/bin/env bash
# Create (or confirm) the torch-xla virtualenv that the `xla` tests use: <repo>/.venv-xla.
#
# Why a separate venv: torch-xla 2.9.0 only runs beside torch 2.9.0, while the main venv pins the CPU
# build of torch 2.13.0. Without a TPU, torch-xla's CPU PJRT device (PJRT_DEVICE=CPU) is the only way to
# exercise the XLA training path on a machine without one. Cost: ~3 min,
# ~7 GB (torch 2.9.0 from PyPI is the CUDA build and drags in the nvidia wheels).
#
# Idempotent: a stamp in the venv holds the hash of this script and the pins; when it matches and the
# imports work, nothing is done.
#
# Environment:
#   PYTHON         interpreter to build the venv with (default: python3.11)
#   XLA_VENV       where to put the venv (default: <repo>/.venv-xla)
#   XLA_VENV_FORCE set to 1 to rebuild even when the stamp matches
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${XLA_VENV:-$repo_root/.venv-xla}"
python="${PYTHON:-python3.11}"
stamp="$venv/.inpars-ray-setup.sha256"

# torch and torch-xla must carry the same minor version; ray/transformers match the main venv.
PINS=(
  "torch==2.9.0"
  "torch-xla==2.9.0"
  "ray[data,train]==2.60.0"
  "transformers==5.23.0"
  "tokenizers==0.23.3"
  "pyarrow==26.0.1"
  "pandas==3.1.1"
  "ir-measures==0.4.3"
  "pytest==9.2.0"
)

want="$( { sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1; echo "${PINS[*]}"; } | sha256sum | cut -d' ' -f1)"
log() { echo "[setup_xla_venv] $*" >&2; }

if [[ "${XLA_VENV_FORCE:-0}" != "1" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$venv/bin/python" -c "import torch_xla, inpars_ray" >/dev/null 2>&1; then
  log "up to date: $venv"
  exit 0
fi

log "building $venv with $python"
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==2.9.0" >"$constraints"

log "installing ${PINS[*]}"
"${pip[@]}" install --quiet -c "$constraints" "${PINS[@]}"

log "installing this repository (editable, no dependencies)"
"${pip[@]}" install --quiet --no-deps -e "$repo_root"

log "checking an XLA step on the CPU PJRT device"
PJRT_DEVICE=CPU "$venv/bin/python" - <<'PY'
import torch, torch_xla
dev = torch_xla.device()
x = torch.ones(2, 2, device=dev)
y = (x @ x).sum()
torch_xla.sync()
assert float(y.cpu()) == 8.0, y
print("torch", torch.__version__, "torch_xla", torch_xla.__version__, "device", dev)
PY

echo "$want" >"$stamp"
log "done: $venv"
