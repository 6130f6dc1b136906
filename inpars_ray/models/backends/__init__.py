"""Generation backends behind one interface (see :mod:`inpars_ray.models.backends.base`).

:func:`make_backend` builds a backend by name and imports its module only then, so a machine without
vLLM or the OpenAI client can still run the hf backend (and vice versa); :func:`check_options` checks a
backend's name and options on the driver, before Ray starts (the modules import no heavy dependency).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

from inpars_ray.errors import ConfigError
from inpars_ray.models.backends.base import Backend, Generation, GenerationParams

#: backend name -> (module, class); the modules import their heavy dependencies lazily
BACKENDS: dict[str, tuple[str, str]] = {
    "hf": ("inpars_ray.models.backends.hf", "HFBackend"),
    "vllm": ("inpars_ray.models.backends.vllm_backend", "VLLMBackend"),
    "openai": ("inpars_ray.models.backends.openai_backend", "OpenAIBackend"),
}
#: backend name -> (module, class) of the typed config its options build; a backend without one takes its
#: options as keyword arguments of its constructor
CONFIGS: dict[str, tuple[str, str]] = {
    "vllm": ("inpars_ray.models.backends.vllm_backend", "VLLMConfig"),
    "openai": ("inpars_ray.models.backends.openai_backend", "OpenAIConfig"),
}

__all__ = ["BACKENDS", "Backend", "Generation", "GenerationParams", "check_options", "make_backend"]


def _load(where: tuple[str, str]) -> Any:
    return getattr(importlib.import_module(where[0]), where[1])


def check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse an unknown backend, an option the backend does not take, or a value its typed config refuses;
    loads no model and reads no secret, so the driver runs it before any actor starts."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    if name in CONFIGS:
        config = _load(CONFIGS[name])
        known = {f.name for f in dataclasses.fields(config)}
    else:
        config = None
        known = set(inspect.signature(_load(BACKENDS[name]).__init__).parameters) - {"self", "model"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) for the {name} backend: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    if config is not None:
        config(**options)  # its own checks (ranges, choices)


def make_backend(name: str, model: str, **options: Any) -> Backend:
    """Construct the backend ``name`` (``hf``, ``vllm`` or ``openai``) for ``model`` with its ``options``."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(model, **options)
