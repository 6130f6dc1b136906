"""A Lucene index as an artifact: where it lives, its manifest, and the copy a searcher opens on its node.

An index folder holds ``lucene/`` (the Lucene index), ``bad_rows.parquet`` and ``manifest.json`` (written
last; it lists every file with its size and sha256), or a manifest naming a pyserini prebuilt index
(:mod:`inpars_ray.stages.prebuilt`). Built by :mod:`inpars_ray.stages.index`; searched by
:mod:`inpars_ray.stages.retrieve`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from inpars_ray.errors import IndexError_
from inpars_ray.io import artifacts, storage
from inpars_ray.io.manifest import read_manifest
from inpars_ray.stages.prebuilt import fetch_prebuilt

logger = logging.getLogger(__name__)

LUCENE_DIR = "lucene"
BAD_ROWS_FILE = "bad_rows.parquet"


def index_manifest(index_dir: storage.PathLike) -> dict[str, Any]:
    """The manifest of a complete index at ``index_dir`` (folder or URI); raises :class:`IndexError_` if none."""
    loc = storage.location(index_dir)
    manifest = read_manifest(loc)
    if not manifest or manifest.get("stage") != "index" or manifest.get("status") != "complete":
        raise IndexError_(f"{loc.uri} holds no complete inpars-ray index; run 'inpars-ray index' first")
    return manifest


def lucene_path(index_dir: storage.PathLike) -> str:
    """Where the Lucene index of ``index_dir`` lives (a folder, a URI or ``pyserini:<name>``); raises if the
    index is incomplete. Searchers open :func:`local_index` instead, which may copy it to this node."""
    manifest = index_manifest(index_dir)
    prebuilt = manifest.get("extra", {}).get("prebuilt")
    if prebuilt:
        return f"pyserini:{prebuilt['name']}"
    return storage.location(index_dir).join(LUCENE_DIR).uri


# --- node-local copies ----------------------------------------------------------------------------------
VERIFIED_STAMP = ".inpars-ray-verified"


def index_cache_dir() -> Path:
    """Where nodes keep their copies of remote indexes: ``$INPARS_RAY_INDEX_CACHE`` or ``indexes`` in the
    node cache of :func:`inpars_ray.io.artifacts.node_cache_dir`."""
    return Path(os.environ.get("INPARS_RAY_INDEX_CACHE") or artifacts.node_cache_dir() / "indexes")


def local_index(index_dir: storage.PathLike) -> Path:
    """A Lucene folder on this node for the complete index at ``index_dir``; what a searcher opens.

    A local index is used in place. A remote one (``gs://...``) is copied once per node into
    :func:`index_cache_dir`, named by its content (the sha256 of every file, from its manifest), each file
    verified against the manifest; a lock makes the actors of one node wait for one copy, and the copy
    appears under its final name only when complete and verified. A pyserini prebuilt index comes through
    pyserini's own download and cache (under the same kind of lock).
    """
    return _materialise(index_dir)[0]


def _materialise(index_dir: storage.PathLike) -> tuple[Path, bool]:
    """(local Lucene folder, whether this call downloaded it)."""
    loc = storage.location(index_dir)
    manifest = index_manifest(loc)
    extra = manifest.get("extra", {})
    if extra.get("prebuilt"):
        return fetch_prebuilt(extra["prebuilt"])
    if loc.is_local:
        return loc.local_path() / LUCENE_DIR, False
    checksums: dict[str, str] = extra.get("checksums") or {}
    if not checksums:
        raise IndexError_(f"the manifest of {loc.uri} lists no checksums; rebuild the index")
    key = hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()[:24]
    cache = index_cache_dir()
    final = cache / key
    if (final / VERIFIED_STAMP).exists():
        return final, False
    from filelock import FileLock

    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"{key}.lock")):
        if (final / VERIFIED_STAMP).exists():  # another actor on this node fetched it while we waited
            return final, False
        t0 = time.perf_counter()
        incoming = cache / f".{key}.incoming"
        names = sorted(n[len(LUCENE_DIR) + 1:] for n in checksums)
        artifacts.download_dir(loc.join(LUCENE_DIR), incoming, names)
        for name in names:
            got = sha256_file(incoming / name)
            if got != checksums[f"{LUCENE_DIR}/{name}"]:
                shutil.rmtree(incoming, ignore_errors=True)
                raise IndexError_(f"{loc.join(LUCENE_DIR, name).uri}: sha256 {got} does not match the index manifest "
                                  "(changed after publishing?); rebuild the index")
        (incoming / VERIFIED_STAMP).write_text(key + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(incoming, final)
        logger.info("copied index %s to %s (%d files, %.1fs)", loc.uri, final, len(names), time.perf_counter() - t0)
        return final, True


def seed_cache(lucene_dir: Path, checksums: dict[str, str]) -> None:
    """Move a just-published index into this node's cache, so searchers here need not download it."""
    from filelock import FileLock

    key = hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()[:24]
    cache = index_cache_dir()
    final = cache / key
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache / f"{key}.lock")):
            if not (final / VERIFIED_STAMP).exists():
                shutil.rmtree(final, ignore_errors=True)
                (lucene_dir / VERIFIED_STAMP).write_text(key + "\n")
                shutil.move(str(lucene_dir), str(final))
    except OSError as exc:  # the cache is an optimisation: searchers download when it is absent
        logger.info("could not seed the index cache %s: %s", final, exc)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
