"""Generation backends behind one interface (see :mod:`inpars_ray.models.backends.base`).

:func:`make_backend` builds a backend by name and imports its module only then, so a machine without
vLLM or the OpenAI client can still run the hf backend (and vice versa).
"""
from __future__ import annotations

import importlib
from typing import Any

from inpars_ray.errors import ConfigError
from inpars_ray.models.backends.base import Backend, Generation, GenerationParams

#: backend name -> (module, class); the modules import their heavy dependencies lazily
BACKENDS: dict[str, tuple[str, str]] = {
    "hf": ("inpars_ray.models.backends.hf", "HFBackend"),
    "vllm": ("inpars_ray.models.backends.vllm_backend", "VLLMBackend"),
    "openai": ("inpars_ray.models.backends.openai_backend", "OpenAIBackend"),
}

__all__ = ["BACKENDS", "Backend", "Generation", "GenerationParams", "make_backend"]


def make_backend(name: str, model: str, **options: Any) -> Backend:
    """Construct the backend ``name`` (``hf``, ``vllm`` or ``openai``) for ``model`` with its ``options``."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(model, **options)
