"""The stage contract: what a stage declares, the one skeleton that runs it, and the typed result it returns.

A stage declares a :class:`StageSpec`: its name, the folder it writes, its *key* (its inputs by content,
such as upstream manifests' hashes, a collection's fingerprint and model keys, beside its own config) and
the outputs it publishes there. :func:`run_once` is the skeleton every stage shares:

1. a complete manifest of that stage and key, whose listed files are all there whole: the earlier output
   is the result (``reused``), and nothing runs;
2. else the stale outputs go, the manifest first (a reader never sees a manifest over half-deleted files);
3. the stage's body runs with a :class:`~inpars_ray.io.manifest.StageRecord` for its counts and timings;
4. the manifest, listing the outputs (:func:`~inpars_ray.io.artifacts.snapshot`), is written last.

The result is a :class:`StageResult`, which downstream code reads by attribute (``counts``, ``extra``,
``key``, ``reused``). It is also a read-only mapping over the manifest as written, so that code reading the
JSON file and code holding the result use the same names.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from inpars_ray.io import artifacts, storage
from inpars_ray.io.manifest import MANIFEST_NAME, StageRecord, config_hash, is_complete, read_complete_manifest

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """A stage's declaration: what it is keyed by and what it publishes.

    ``key`` holds the stage's inputs by content and its config (hashed into the manifest's ``config_hash``);
    ``outputs`` are the folders or files under ``out`` that the manifest lists (None: it lists none, for a
    stage that keeps state of its own under ``out`` across attempts, such as train's checkpoints);
    ``stale`` names outputs that are deleted before a run but not published (e.g. a convenience copy written
    outside the listed files). A stage writing a single file next to others (a TREC run) names its manifest
    ``manifest_name`` so that several such files share one folder.
    """

    name: str
    out: storage.Location
    key: Mapping[str, Any]
    outputs: tuple[str, ...] | None = None
    stale: tuple[str, ...] = ()
    manifest_name: str = MANIFEST_NAME


@dataclasses.dataclass(frozen=True, eq=False)  # equality is the mapping's: a result equals its manifest
class StageResult(Mapping[str, Any]):
    """What a stage produced: where, from which key, with which counts, and whether it was reused."""

    stage: str
    out: storage.Location
    manifest: Mapping[str, Any]
    reused: bool = False

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.manifest.get("counts", {}))

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.manifest.get("extra", {}))

    @property
    def files(self) -> dict[str, int]:
        return dict(self.manifest.get("files", {}))

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    @property
    def key(self) -> str:
        """The content key of this output for a downstream stage (:func:`~inpars_ray.io.manifest.input_key`)."""
        return config_hash(dict(self.manifest))

    def __getitem__(self, name: str) -> Any:
        return self.manifest[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.manifest)

    def __len__(self) -> int:
        return len(self.manifest)

    def summary(self) -> str:
        """The counts in one short phrase (zeros left out), marked when the stage was already complete."""
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items() if v or k in ("kept", "triples"))
        return f"already complete: {counts}" if self.reused else counts


def reused(spec: StageSpec) -> StageResult | None:
    """The earlier result of ``spec`` when its output is complete for this very key, else None."""
    if not is_complete(spec.out, spec.name, spec.key, spec.manifest_name):
        return None
    logger.info("%s output in %s is complete for this config; nothing to do", spec.name, spec.out.uri)
    return StageResult(spec.name, spec.out, read_complete_manifest(spec.out, spec.manifest_name), reused=True)


def run_once(spec: StageSpec, body: Callable[[StageRecord], Mapping[str, int] | None]) -> StageResult:
    """Run a stage's ``body`` unless its output is complete for ``spec.key``; returns the stage's result.

    ``body`` writes the outputs under ``spec.out`` and fills the record's counts, timings and extras. It may
    return the published files itself (when it checked them before the manifest goes out); otherwise they
    are ``spec.outputs`` as they are on storage then.
    """
    done = reused(spec)
    if done is not None:
        return done
    for name in (spec.manifest_name, *(spec.outputs or ()), *spec.stale):  # the manifest goes first
        spec.out.join(name).delete()
    record = StageRecord(spec.name, dict(spec.key))
    files = body(record)
    if files is None and spec.outputs is not None:
        files = artifacts.snapshot(spec.out, *spec.outputs)
    manifest = record.write(spec.out, name=spec.manifest_name, files=None if files is None else dict(files))
    return StageResult(spec.name, spec.out, manifest)
