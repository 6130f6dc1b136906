"""Typed errors raised by inpars-ray.

Library code raises these; only the CLI turns them into an exit status. Every error that concerns an
input file names the file and, where it applies, the 1-based line number.
"""
from __future__ import annotations


class InparsError(Exception):
    """Base class of every error inpars-ray raises on purpose."""


class ConfigError(InparsError):
    """A configuration value is invalid or inconsistent."""


class MissingDependencyError(InparsError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed. "
            f"Install it with: pip install 'inpars-ray[{extra}]'"
        )
        self.module = module
        self.extra = extra


class CollectionError(InparsError):
    """A collection cannot be resolved, downloaded or read."""


class DownloadError(CollectionError):
    """A download failed or its checksum did not match."""


class FormatError(CollectionError):
    """A row of an input file is malformed.

    Attributes:
        path: the file the row came from.
        line: 1-based line number in that file (0 when the error concerns the whole file).
        reason: what is wrong with the row.
    """

    def __init__(self, path: str, line: int, reason: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class SchemaError(InparsError):
    """A table handed to a stage lacks columns that stage needs."""


class BackendError(InparsError):
    """A generation or scoring backend failed in a way retries could not cure."""
