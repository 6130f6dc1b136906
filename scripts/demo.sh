#!/usr/bin/env bash
# Install (if needed) and run the main job on the embedded default: local Ray, the bundled collection.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/inpars-ray run "$@"
