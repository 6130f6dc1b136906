"""How every stage declares its settings: a frozen pydantic dataclass that rejects unknown fields.

Each field carries its default, its range and its description in one place (``Field``); the pipeline
config (:mod:`inpars_ray.config`) nests these classes, and the CLI builds its options from them. Built
directly (or through ``dataclasses.replace``), a bad value raises :class:`~inpars_ray.errors.ConfigError`
naming the field; nested inside the pipeline config, pydantic reports the full dotted path instead.
"""
from __future__ import annotations

import functools
from typing import Any, TypeVar, dataclass_transform

from pydantic import ConfigDict, Field, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from inpars_ray.errors import ConfigError

__all__ = ["Field", "describe_errors", "field_validator", "stage_config"]

T = TypeVar("T")


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``dotted.path: what is wrong (got VALUE)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = "unknown key" if err["type"] in ("unexpected_keyword_argument", "extra_forbidden") else err["msg"]
        got = "" if err["type"] in ("missing", "unexpected_keyword_argument", "extra_forbidden") \
            else f" (got {err.get('input')!r})"
        lines.append(f"{loc or '(top level)'}: {msg}{got}")
    return "; ".join(lines)


# dataclass_transform (PEP 681) tells type checkers that a decorated class is a frozen dataclass, so calls to
# its __init__ and dataclasses.replace are checked. Field is deliberately not declared a field specifier: type
# checkers read only a specifier's keyword ``default=``, and our fields pass it positionally, so every
# ``= Field(...)`` counts as a default there (a missing required field is still caught when the class is built)
@dataclass_transform(frozen_default=True)
def stage_config(cls: type[T]) -> type[T]:
    """``pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))``, with a
    ``ConfigError`` instead of pydantic's ValidationError when the class is built directly."""
    built = dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
    init = built.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise ConfigError(f"{built.__name__}: {describe_errors(exc)}") from None

    built.__init__ = __init__  # type: ignore[method-assign]
    return built  # type: ignore[return-value]  # the same class, now a pydantic dataclass
