"""Stage — index: BM25 over a collection with Lucene (Anserini, as shipped inside pyserini).

The corpus is streamed through Ray (:func:`inpars_ray.io.load.read_corpus`), validated row by row,
checked for duplicate ids, written as clean BEIR JSONL shards and indexed by Anserini's ``IndexCollection``
with the settings of Anserini's BEIR "flat" regressions (``BeirFlatCollection``: title and text in one
``contents`` field; positions, doc vectors and raw documents stored). The indexer runs in a JVM of its own
with a bounded heap, so its memory is returned when it ends instead of staying in a Ray worker's JVM.
The artifact's layout and the node-local copies searchers open are :mod:`inpars_ray.stages.lucene`.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError, FormatError, IndexError_, find_typed_error
from inpars_ray.io import artifacts, storage
from inpars_ray.io.catalog import Collection
from inpars_ray.io.load import BadRows, LoadConfig, id_hashes, iter_lines, read_corpus, split_bad_rows
from inpars_ray.io.manifest import MANIFEST_NAME, StageRecord, collection_key, read_manifest
from inpars_ray.io.stage import StageResult, StageSpec, reused
from inpars_ray.runtime.java import num_docs
from inpars_ray.stageconfig import Field, stage_config
from inpars_ray.stages.lucene import BAD_ROWS_FILE, LUCENE_DIR, seed_cache, sha256_file
from inpars_ray.stages.prebuilt import prebuilt_config, prebuilt_name, publish_prebuilt

logger = logging.getLogger(__name__)


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
    java_heap_mb: int | None = Field(None, ge=64, description="maximum heap (-Xmx) of the indexer's own JVM in MB "
                                     "(the searchers' is bm25.searcher_heap_mb); null: memory_buffer_mb + 1024. "
                                     "Not part of the index key")
    prebuilt: str | None = Field(None, description="use a pyserini prebuilt index instead of building one: "
                                 "'auto' (beir-v1.0.0-<name>.flat for beir/<name>, build otherwise), a prebuilt "
                                 "index name, or null (always build)")
    prebuilt_table: str | None = Field(None, description="JSON file (any URI) of pyserini table entries "
                                       "(urls, md5, ...) that override pyserini's own, e.g. to fetch prebuilt "
                                       "indexes from a mirror")

    def __post_init__(self) -> None:
        if self.java_heap_mb is not None and self.java_heap_mb <= self.memory_buffer_mb:
            raise ConfigError(f"index java_heap_mb ({self.java_heap_mb}) must exceed memory_buffer_mb "
                              f"({self.memory_buffer_mb}): Lucene's RAM buffer lives in that heap")


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
                config: IndexConfig = IndexConfig()) -> StageResult:
    """Build (or reuse) the BM25 index of ``collection`` under ``index_dir`` (a folder or URI).

    Layout: ``lucene/`` (the Lucene index), ``bad_rows.parquet`` (file, line, reason of every row left out)
    and ``manifest.json``, written last, which lists every file with its size and sha256. The build runs on
    a Ray worker when Ray is up (any node: the index is published through :mod:`inpars_ray.io.storage`) and
    in this process otherwise. With a pyserini prebuilt index (``config.prebuilt``) nothing is built: the
    manifest names the prebuilt index and every node fetches it through pyserini's own download and cache.
    """
    loc = storage.location(index_dir)
    prebuilt = prebuilt_name(collection, config)
    stage_config = (prebuilt_config(collection, prebuilt, config) if prebuilt
                    else _index_config(collection, load_config, config))
    # only the reuse check of the shared skeleton: the index is built in scratch space and published whole
    # (one rename, or its files then the manifest), so there is nothing half-written under loc to delete first
    done = reused(StageSpec("index", loc, stage_config, outputs=(LUCENE_DIR, BAD_ROWS_FILE)))
    if done is not None:
        return done
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
            return StageResult("index", loc, ray.get(task.remote(collection, loc, load_config, config, stage_config,
                                                                 prebuilt)))
        except Exception as exc:
            typed = find_typed_error(exc)
            if typed is None or typed is exc:
                raise
            raise typed from None
    return StageResult("index", loc, _build_and_publish(collection, loc, load_config, config, stage_config, prebuilt))


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
        return publish_prebuilt(loc, prebuilt, config, stage_config)
    record = StageRecord("index", stage_config)
    scratch_parent = loc.local_path().parent if loc.is_local else None
    if scratch_parent is not None:
        scratch_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{loc.name}.", dir=scratch_parent))
    try:
        n_docs, bad, unknown = _build_lucene(collection, staging, load_config, config, record)
        pq.write_table(bad.to_table(), staging / BAD_ROWS_FILE, **artifacts.PARQUET_WRITE)
        record.counts.update(documents=n_docs, bad_rows=len(bad), qrels_unknown_docs=unknown)
        record.extra["bad_rows_file"] = BAD_ROWS_FILE
        with record.timed("publish"):
            checksums = {f"{LUCENE_DIR}/{p.name}": sha256_file(p) for p in sorted((staging / LUCENE_DIR).iterdir())}
            record.extra["checksums"] = checksums
            if loc.is_local:  # one rename: the folder is never half-written
                record.write(staging, files=artifacts.snapshot(staging))
                target = loc.local_path()
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging, target)
                manifest = read_manifest(target) or {}
            else:  # an object store: upload every file, then the manifest as the commit marker
                artifacts.upload_dir(staging, loc)
                manifest = record.write(loc, files=artifacts.snapshot(loc, LUCENE_DIR, BAD_ROWS_FILE))
                seed_cache(staging / LUCENE_DIR, checksums)
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
    indexed = num_docs(staging / LUCENE_DIR)
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
    from inpars_ray.runtime.java import anserini_jar, java_executable

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
