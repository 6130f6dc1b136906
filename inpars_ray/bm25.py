"""BM25 over a collection with Lucene (Anserini, as shipped inside pyserini): index and retrieve.

Index: the corpus is streamed through Ray (:func:`inpars_ray.load.read_corpus`), validated row by row,
checked for duplicate ids, written as clean BEIR JSONL shards and indexed by Anserini's ``IndexCollection``
with the settings of Anserini's BEIR "flat" regressions (``BeirFlatCollection``: title and text in one
``contents`` field; positions, doc vectors and raw documents stored).

Retrieve: Anserini's own multi-threaded ``SearchCollection`` runs in-process (pyjnius) on a batch of
queries and writes a TREC run that is read back as Arrow. Going through ``LuceneSearcher.batch_search``
instead marshals every hit through JNI as a Java object, which was >4x slower at depth 1000
(ENVIRONMENT.md); with ``SearchCollection`` only one file crosses the boundary per batch. For many
queries, :func:`retrieve_dataset` shards the queries over Ray actors, each with its JVM started once.
Scores and the tie-break (by docid) are Anserini's own, so a run equals ``SearchCollection``'s exactly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
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
from inpars_ray.manifest import StageRecord, collection_key, input_key, is_complete, read_manifest
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
    return {"collection": collection_key(collection), "load": load, "index": cfg}


def _write_shard(rows: pa.Table, path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for doc_id, title, text in zip(*(rows.column(c).to_pylist() for c in (S.DOC_ID, S.TITLE, S.TEXT))):
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")


def _duplicates(hashes: np.ndarray) -> np.ndarray:
    """Positions (into ``hashes``) of every occurrence but the first of a repeated hash."""
    order = np.argsort(hashes, kind="stable")
    sorted_h = hashes[order]
    repeat = np.zeros(len(hashes), dtype=bool)
    repeat[1:] = sorted_h[1:] == sorted_h[:-1]
    return np.sort(order[repeat])


def _check_qrels(collection: Collection, corpus_hashes: np.ndarray, bad: BadRows, strict: bool) -> int:
    """Report judgements naming documents the corpus does not have; returns how many."""
    qrels_dir = collection.path("qrels")
    try:
        infos = collection.filesystem.get_file_info(pafs.FileSelector(qrels_dir))
    except FileNotFoundError:
        return 0
    known = np.sort(corpus_hashes)
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


def build_index(collection: Collection, index_dir: str | os.PathLike[str], load_config: LoadConfig = LoadConfig(),
                config: IndexConfig = IndexConfig()) -> dict[str, Any]:
    """Build (or reuse) the BM25 index of ``collection`` in ``index_dir``; return its manifest.

    Layout: ``index_dir/lucene/`` (the Lucene index), ``manifest.json``, and with ``skip_bad_rows``
    ``bad_rows.parquet`` (file, line, reason of every row left out). The folder is built beside its final
    place and renamed into it, so ``index_dir`` is never half-written.
    """
    from inpars_ray._java import autoclass

    index_dir = Path(index_dir)
    stage_config = _index_config(collection, load_config, config)
    if is_complete(index_dir, "index", stage_config):
        logger.info("index in %s is complete for this corpus and config; reusing it", index_dir)
        return read_manifest(index_dir) or {}
    record = StageRecord("index", stage_config)
    staging = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.", dir=index_dir.parent if index_dir.parent.exists()
                                    else _mkdir(index_dir.parent)))
    try:
        shards = staging / "corpus"
        shards.mkdir()
        bad = BadRows()
        hashes, lines, shard_of = [], [], []
        n_docs = n_shards = 0
        with record.timed("stage_corpus"):
            buffer: list[pa.Table] = []
            buffered = 0

            def flush() -> None:
                nonlocal buffer, buffered, n_shards
                if buffered:
                    _write_shard(pa.concat_tables(buffer), shards / f"part-{n_shards:05d}.jsonl")
                    n_shards += 1
                buffer, buffered = [], 0

            for batch in _unwrapped(read_corpus(collection, load_config).iter_batches(batch_format="pyarrow",
                                                                                        batch_size=None)):
                good, bad_here = split_bad_rows(batch)
                bad.extend(bad_here)
                if good.num_rows == 0:
                    continue
                hashes.append(id_hashes(good.column(S.DOC_ID)))
                lines.append(good.column(S.SOURCE_LINE).to_numpy())
                shard_of.append(np.full(good.num_rows, n_shards, dtype=np.int32))
                n_docs += good.num_rows
                buffer.append(good)
                buffered += good.num_rows
                if buffered >= config.shard_rows:
                    flush()
            flush()
        if n_docs == 0:
            bad.raise_first()
            raise FormatError(collection.display("corpus.jsonl"), 0, "the corpus has no documents")
        all_hashes = np.concatenate(hashes)
        all_lines = np.concatenate(lines)
        with record.timed("check_ids"):
            dup_pos = _duplicates(all_hashes)
            if len(dup_pos):
                corpus_shown = collection.display("corpus.jsonl")
                first_line = {}
                for pos in np.argsort(all_hashes, kind="stable"):
                    first_line.setdefault(all_hashes[pos], int(all_lines[pos]))
                for pos in dup_pos:
                    bad.add(corpus_shown, int(all_lines[pos]),
                            f"duplicate document id (first seen at line {first_line[all_hashes[pos]]})")
                if load_config.skip_bad_rows:
                    _drop_lines(shards, set(int(all_lines[p]) for p in dup_pos), all_lines, np.concatenate(shard_of))
                    keep = np.ones(len(all_hashes), dtype=bool)
                    keep[dup_pos] = False
                    all_hashes = all_hashes[keep]
                    n_docs = int(keep.sum())
            unknown = _check_qrels(collection, all_hashes, bad, strict=not load_config.skip_bad_rows)
        if not load_config.skip_bad_rows:
            bad.rows.sort(key=lambda r: (r[0], r[1]))
            bad.raise_first()
        with record.timed("lucene_index"):
            parser = autoclass("org.kohsuke.args4j.CmdLineParser")
            args = autoclass("io.anserini.index.IndexCollection$Args")()
            argv = ["-collection", "BeirFlatCollection", "-input", str(shards), "-index", str(staging / LUCENE_DIR),
                    "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(config.threads),
                    "-storePositions", "-storeDocvectors", "-quiet"] + (["-storeRaw"] if config.store_raw else [])
            parser(args).parseArgument(*argv)
            autoclass("io.anserini.index.IndexCollection")(args).run()
        indexed = _num_docs(staging / LUCENE_DIR)
        if indexed != n_docs:
            raise IndexError_(f"Lucene indexed {indexed} documents but {n_docs} were staged")
        shutil.rmtree(shards)
        pq.write_table(bad.to_table(), staging / BAD_ROWS_FILE)
        record.counts.update(documents=n_docs, bad_rows=len(bad), qrels_unknown_docs=unknown)
        record.extra["bad_rows_file"] = BAD_ROWS_FILE
        manifest = record.write(staging)
        if index_dir.exists():
            shutil.rmtree(index_dir)
        os.replace(staging, index_dir)
        if len(bad):
            logger.warning("%d bad rows left out of the index; see %s", len(bad), index_dir / BAD_ROWS_FILE)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def _drop_lines(shards: Path, drop: set[int], lines: np.ndarray, shard_of: np.ndarray) -> None:
    """Rewrite the staged shards without the rows that came from the ``drop`` lines (duplicates)."""
    for shard_no in sorted(set(int(shard_of[i]) for i in range(len(lines)) if int(lines[i]) in drop)):
        path = shards / f"part-{shard_no:05d}.jsonl"
        shard_lines = lines[shard_of == shard_no]
        kept = [row for row, src in zip(path.read_text(encoding="utf-8").splitlines(), shard_lines)
                if int(src) not in drop]
        path.write_text("".join(r + "\n" for r in kept), encoding="utf-8")


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


def lucene_path(index_dir: str | os.PathLike[str]) -> Path:
    """The Lucene folder of an index built by :func:`build_index`; raises if the index is incomplete."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    if not manifest or manifest.get("stage") != "index" or manifest.get("status") != "complete":
        raise IndexError_(f"{index_dir} holds no complete inpars-ray index; run 'inpars-ray index' first")
    return index_dir / LUCENE_DIR


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

    Use directly (``BM25Searcher(index_dir, k)(queries)``) or as a Ray Data callable class.
    """

    def __init__(self, index_dir: str | os.PathLike[str], k: int, config: BM25Config = BM25Config()) -> None:
        from inpars_ray._java import autoclass

        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.lucene = lucene_path(index_dir)
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
    # An actor that reserved every CPU of the cluster would starve the tasks that feed it and hang: the
    # queries (small) are materialised first, and an actor never asks for more CPUs than the cluster has.
    cpus = min(float(config.threads), float(ray.cluster_resources().get("CPU", 1.0)))
    return queries.materialize().map_batches(
        BM25Searcher,
        fn_constructor_args=(str(index_dir), k, config),
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
