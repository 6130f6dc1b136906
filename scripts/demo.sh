#!/usr/bin/env bash
# Install (if needed) and run the main job on the embedded default: local Ray, the real small models
# (SmolLM2 generator, MiniLM ranker) on the python-docstrings collection built from the standard library.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/inpars-ray run --config configs/demo.yaml "$@"
