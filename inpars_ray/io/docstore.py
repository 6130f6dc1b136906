"""Document store: the corpus's texts fetched by document id, without a shuffle and without the whole corpus.

Rerank, filter and mine each need the texts of a small subset of the corpus (the hits of a run, the source
documents of the generated queries, the negatives). Without it they hash-exchange the whole corpus with
those rows (as they still do where no store is built), which costs a full pass over the corpus and a shuffle
per stage. The store is built once per corpus version and then answers ``fetch(ids)`` in any process, in
time that depends on the number of ids, not on the size of the corpus.

Layout of a store folder (every file is written beside a temporary name and renamed, the manifest last):

* ``docs.arrow`` -- an Arrow IPC file of (doc_id, title, text), rows ordered by (hash of id, id); opened by
  memory map, so a lookup copies only the rows it takes and the page cache is shared by every process on a
  node (no per-actor copy of the corpus);
* ``hashes.npy`` -- the 64-bit id hashes in row order (sorted): the sparse index ``np.searchsorted`` runs on;
* ``docstore.json`` -- the manifest: format version, row count, the corpus fingerprint it was built from.

Building is an external sort that never holds more than one bucket: a first pass spreads the corpus over
``2**bits`` bucket files by the top bits of the id hash (so buckets are consecutive hash ranges), a second
pass sorts each bucket and appends it to ``docs.arrow``. Duplicate ids are an error naming the id.

Layers: :func:`id_hashes` is pure; :class:`DocStore` opens a store once per
process (:func:`open_store` caches it, so a Ray task or actor pays the open once); :func:`build_store` /
:func:`ensure_store` write one (the latter from a collection, reused while the corpus is unchanged).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S
from inpars_ray.errors import FormatError, InparsError
from inpars_ray.io.text import document_texts

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DOCS_FILE, HASHES_FILE, MANIFEST_FILE = "docs.arrow", "hashes.npy", "docstore.json"
#: the columns a store holds, in order (the corpus without its source-line bookkeeping)
STORE_SCHEMA = pa.schema([pa.field(S.DOC_ID, pa.string()), pa.field(S.TITLE, pa.string()),
                          pa.field(S.TEXT, pa.string())])
#: bytes of corpus text per bucket of the external sort: bounds the builder's memory
BUCKET_BYTES = 64 << 20
_HASH = "pandas.util.hash_array (default key), uint64"


class DocStoreError(InparsError):
    """A document store is missing, incomplete, or does not hold an id that must be there."""


# --- pure functions -----------------------------------------------------------------------------------------
def id_hashes(ids: pa.Array | pa.ChunkedArray | list[str] | np.ndarray) -> np.ndarray:
    """Stable 64-bit hashes of document ids (the same in every process and on every run)."""
    import pandas as pd

    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        ids = ids.to_numpy(zero_copy_only=False)
    return pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False)


def take_rows(column: pa.ChunkedArray, positions: np.ndarray) -> pa.Array:
    """``column[positions]`` (null where a position is negative), taken chunk by chunk.

    ``ChunkedArray.take`` first concatenates every chunk: on a memory-mapped store that copies the whole
    column into memory at each lookup, and past 2 GiB of text it fails (32-bit string offsets). Here each
    chunk gives only the rows asked of it, and the pieces are put back in the order asked.
    """
    positions = np.asarray(positions, dtype=np.int64)
    starts = np.cumsum([0] + [len(c) for c in column.chunks])
    known = np.flatnonzero(positions >= 0)
    if len(known) == 0:
        return pa.nulls(len(positions), column.type)
    chunk_of = np.searchsorted(starts, positions[known], side="right") - 1
    order = np.argsort(chunk_of, kind="stable")
    grouped, chunks = positions[known[order]], chunk_of[order]  # the asked rows, grouped by chunk
    bounds = np.flatnonzero(np.diff(chunks)) + 1
    pieces = [column.chunk(int(part[0])).take(pa.array(rows - starts[part[0]], pa.int64()))
              for rows, part in zip(np.split(grouped, bounds), np.split(chunks, bounds))]
    got = pa.concat_arrays(pieces)
    where = np.full(len(positions), -1, dtype=np.int64)
    where[known[order]] = np.arange(len(known))
    return got.take(pa.array(where, pa.int64(), mask=where < 0))


# --- reading ------------------------------------------------------------------------------------------------
class DocStore:
    """A built store, opened by memory map. Cheap to open; use :func:`open_store` to open once per process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest = read_store_manifest(self.path)
        if manifest is None:
            raise DocStoreError(f"{self.path} holds no complete document store (no {MANIFEST_FILE}); build it with "
                                "inpars_ray.io.docstore.ensure_store")
        if manifest.get("format") != FORMAT_VERSION:
            raise DocStoreError(f"{self.path}: document store format {manifest.get('format')!r}, this version reads "
                                f"{FORMAT_VERSION}; rebuild it")
        self.manifest = manifest
        self._table = pa.ipc.open_file(pa.memory_map(str(self.path / DOCS_FILE), "r")).read_all()
        self._hashes = np.load(self.path / HASHES_FILE, mmap_mode="r")
        if self._table.num_rows != len(self._hashes) or self._table.num_rows != manifest["documents"]:
            raise DocStoreError(f"{self.path}: {self._table.num_rows} rows, {len(self._hashes)} hashes, manifest "
                                f"says {manifest['documents']}: the store is damaged; rebuild it")
        self._ids = self._table.column(S.DOC_ID)

    def __len__(self) -> int:
        return self._table.num_rows

    def __repr__(self) -> str:
        return f"DocStore({str(self.path)!r}, documents={len(self)})"

    def positions(self, ids: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
        """Row of each id in the store, ``-1`` where the store does not hold it (null ids are never held)."""
        ids = pa.array(ids, pa.string()) if isinstance(ids, list) else ids
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids.cast(pa.string())
        n = len(ids)
        out = np.full(n, -1, dtype=np.int64)
        if n == 0 or len(self) == 0:
            return out
        valid = np.asarray(ids.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        want = ids.to_numpy(zero_copy_only=False)
        hashes = id_hashes(np.where(valid, want, ""))
        pos = np.searchsorted(self._hashes, hashes, side="left")
        inside = valid & (pos < len(self))
        cand = np.where(inside, pos, 0)
        found = inside & (np.asarray(self._hashes[cand]) == hashes)
        # the hash matched; the id must too (64-bit collisions are rare but possible: scan the equal-hash run)
        got = take_rows(self._ids, cand[found]).to_numpy(zero_copy_only=False)
        same = got == want[found]
        rows = np.flatnonzero(found)
        out[rows[same]] = cand[found][same]
        for i in rows[~same]:
            j = int(cand[i]) + 1
            while j < len(self) and self._hashes[j] == hashes[i]:
                if self._ids[j].as_py() == want[i]:
                    out[i] = j
                    break
                j += 1
        return out

    def fetch(self, ids: pa.Array | pa.ChunkedArray | list[str], columns: list[str] | None = None) -> pa.Table:
        """The store's rows for ``ids``, in the order given (repeats allowed); nulls where an id is unknown.

        ``columns`` defaults to (doc_id, title, text); the ``doc_id`` column returned is the id asked for.
        """
        columns = columns or STORE_SCHEMA.names
        unknown = [c for c in columns if c not in STORE_SCHEMA.names]
        if unknown:
            raise DocStoreError(f"a document store has no column(s) {unknown}; it holds {STORE_SCHEMA.names}")
        pos = self.positions(ids)
        asked = pa.array(ids, pa.string()) if isinstance(ids, list) else ids
        cols = {c: (asked if c == S.DOC_ID else take_rows(self._table.column(c), pos)) for c in columns}
        return pa.table(cols, schema=pa.schema([STORE_SCHEMA.field(c) for c in columns]))

    def texts(self, ids: pa.Array | pa.ChunkedArray | list[str], missing: str = "null",
              what: str = "document") -> pa.Array:
        """The scored/trained text of each document (:func:`inpars_ray.io.text.document_texts`).

        ``missing="null"`` leaves unknown ids null (the caller counts them); ``"raise"`` raises
        :class:`DocStoreError` naming the first unknown id and ``what`` the ids are.
        """
        if missing not in ("null", "raise"):
            raise ValueError(f"missing must be 'null' or 'raise', got {missing!r}")
        rows = self.fetch(ids, [S.TITLE, S.TEXT])
        out = document_texts(rows.column(S.TITLE), rows.column(S.TEXT))
        if missing == "raise" and out.null_count:
            asked = pa.array(ids, pa.string()) if isinstance(ids, list) else ids
            first = asked.filter(pc.is_null(out))[0].as_py()
            raise DocStoreError(f"document {first!r} ({what}) is not in the corpus ({out.null_count} unknown ids): "
                                "the input was made from another version of the collection")
        return out


_OPEN: dict[str, DocStore] = {}


def open_store(path: str | os.PathLike[str]) -> DocStore:
    """The store at ``path``, opened once per process (Ray tasks and actors call this on every batch)."""
    key = str(Path(path).resolve())
    store = _OPEN.get(key)
    if store is None or store.manifest != read_store_manifest(Path(key)):
        store = _OPEN[key] = DocStore(key)
    return store


def read_store_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a complete store, or None."""
    try:
        return json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


# --- building -----------------------------------------------------------------------------------------------
def bucket_bits(corpus_bytes: int | None) -> int:
    """Bits of the hash that choose a bucket: enough buckets of about :data:`BUCKET_BYTES` each."""
    if not corpus_bytes or corpus_bytes <= BUCKET_BYTES:
        return 0
    return int(np.ceil(np.log2(corpus_bytes / BUCKET_BYTES)))


def build_store(blocks: Iterable[pa.Table], path: str | os.PathLike[str], corpus_bytes: int | None = None,
                source: dict[str, Any] | None = None, display: str = "corpus.jsonl") -> dict[str, Any]:
    """Write a store from corpus blocks (``doc_id``, ``title``, ``text``) to ``path``; return its manifest.

    ``corpus_bytes`` (the corpus file's size, if known) sizes the buckets of the external sort; ``source``
    is recorded in the manifest (the corpus fingerprint :func:`ensure_store` compares). A repeated id or a
    null id is a :class:`~inpars_ray.errors.FormatError` naming ``display``.
    """
    path = Path(path)
    bits = bucket_bits(corpus_bytes)
    work = path / ".build"
    shutil.rmtree(work, ignore_errors=True)
    for name in (MANIFEST_FILE, DOCS_FILE, HASHES_FILE):
        (path / name).unlink(missing_ok=True)
    work.mkdir(parents=True)
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    try:
        # pass 1: spread the blocks over hash-range buckets (one open IPC stream per bucket)
        for block in blocks:
            block = block.select(STORE_SCHEMA.names).cast(STORE_SCHEMA)
            if block.column(S.DOC_ID).null_count:
                raise FormatError(display, 0, "a document has no id")
            if block.num_rows == 0:
                continue
            hashes = id_hashes(block.column(S.DOC_ID))
            bucket = (hashes >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(hashes), np.int64)
            block = block.append_column("_hash", pa.array(hashes, pa.uint64()))
            for b in np.unique(bucket):
                part = block.filter(pa.array(bucket == b))
                if b not in writers:
                    writers[b] = pa.ipc.new_stream(str(work / f"bucket-{b:05d}.arrow"), part.schema)
                writers[b].write_table(part)
        for w in writers.values():
            w.close()
        # pass 2: each bucket sorted by (hash, id) and appended; buckets are ordered hash ranges
        tmp_docs, total = work / DOCS_FILE, 0
        hash_parts: list[np.ndarray] = []
        with pa.ipc.new_file(str(tmp_docs), STORE_SCHEMA) as out:
            for b in sorted(writers):
                with pa.memory_map(str(work / f"bucket-{b:05d}.arrow"), "r") as src:
                    part = pa.ipc.open_stream(src).read_all()
                part = part.take(pc.sort_indices(part, [("_hash", "ascending"), (S.DOC_ID, "ascending")]))
                hashes = part.column("_hash").to_numpy()
                ids = part.column(S.DOC_ID)
                same = np.flatnonzero(hashes[1:] == hashes[:-1])
                for i in same:  # equal hashes are adjacent; an equal id next to it is a duplicate
                    if ids[int(i)] == ids[int(i) + 1]:
                        raise FormatError(display, 0, f"duplicate document id {ids[int(i)].as_py()!r}; "
                                                      "run 'inpars-ray index' to list every bad row")
                out.write_table(part.drop_columns(["_hash"]), max_chunksize=1 << 16)
                hash_parts.append(hashes)
                total += part.num_rows
                (work / f"bucket-{b:05d}.arrow").unlink()
        all_hashes = np.concatenate(hash_parts) if hash_parts else np.zeros(0, np.uint64)
        np.save(work / HASHES_FILE, all_hashes)
        os.replace(tmp_docs, path / DOCS_FILE)
        os.replace(work / HASHES_FILE, path / HASHES_FILE)
    finally:
        for w in writers.values():
            try:
                w.close()
            except Exception:  # already closed (the normal path) or failed mid-write; the folder is removed
                pass
        shutil.rmtree(work, ignore_errors=True)
    manifest = {"format": FORMAT_VERSION, "documents": total, "hash": _HASH, "bucket_bits": bits,
                "source": source or {}}
    tmp = path / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path / MANIFEST_FILE)  # written last: its presence means the store is complete
    logger.info("document store %s: %d documents", path, total)
    return manifest


def store_source(collection: Any, load_config: Any) -> dict[str, Any]:
    """What a store of ``collection`` depends on: the corpus's location, size and mtime, and the load rules."""
    import dataclasses

    info = collection.filesystem.get_file_info(collection.corpus_path())
    is_instance = dataclasses.is_dataclass(load_config) and not isinstance(load_config, type)
    load = dataclasses.asdict(load_config) if is_instance else repr(load_config)
    return {"corpus": collection.display("corpus.jsonl"), "size": info.size, "mtime_ns": info.mtime_ns,
            "load": json.loads(json.dumps(load, default=str))}


def default_store_path(collection: Any, load_config: Any) -> Path:
    """Where :func:`ensure_store` keeps a collection's store: under the cache dir, keyed by its source."""
    import hashlib

    from inpars_ray.io.catalog import default_cache_dir

    key = hashlib.sha256(json.dumps(store_source(collection, load_config), sort_keys=True).encode()).hexdigest()
    return default_cache_dir() / "docstore" / key[:20]


def ensure_store(collection: Any, load_config: Any = None, path: str | os.PathLike[str] | None = None) -> Path:
    """The folder of an up-to-date store of ``collection``'s corpus; built (with Ray) when missing or stale.

    Only good corpus rows are stored (the loader's rules, ``load_config``); a store whose manifest names
    another corpus size, mtime or load config is rebuilt.
    """
    from inpars_ray.io.load import LoadConfig
    from inpars_ray.runtime.exchange import corpus_documents

    load_config = load_config or LoadConfig()
    source = store_source(collection, load_config)
    path = Path(path) if path is not None else default_store_path(collection, load_config)
    manifest = read_store_manifest(path)
    if manifest is not None and manifest.get("format") == FORMAT_VERSION and manifest.get("source") == source:
        return path
    logger.info("building the document store of %s in %s", collection.display(), path)
    blocks = corpus_documents(collection, load_config).iter_batches(batch_format="pyarrow", batch_size=None)
    # built beside the final folder and renamed into place, so a reader never sees a half-built store
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_store(blocks, tmp, corpus_bytes=source["size"], source=source,
                    display=collection.display("corpus.jsonl"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


# --- where the stages' document joins read (inpars_ray.stages.ranker_input) ----------------------------------
def store_for(collection: Any, load_config: Any = None) -> Path | None:
    """An up-to-date store of ``collection`` when every Ray worker can read it, else None.

    The store is built on the driver's disk; on a one-node cluster every worker reads it there. On a
    cluster of several nodes the stages keep the hash exchange of the corpus (None) until the store is
    published to the run root like the index.
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1:
        logger.info("%d Ray nodes: document texts are joined by a hash exchange, not the local store", len(alive))
        return None
    return ensure_store(collection, load_config)
