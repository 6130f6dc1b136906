"""Stage — retrieve: BM25 top-k of a batch of queries with Anserini's own ``SearchCollection``.

Anserini's multi-threaded ``SearchCollection`` runs in-process (pyjnius) on a batch of queries and writes a
TREC run that is read back as Arrow. Going through ``LuceneSearcher.batch_search`` instead marshals every
hit through JNI as a Java object: at depth 1000, 2,000 queries over 2,000 documents on 2 threads did not
finish in 120 s that way, while ``SearchCollection`` wrote the same run in 28 s; with
``SearchCollection`` only one file crosses the boundary per batch. For many queries,
:func:`retrieve_dataset` shards the queries over Ray actors, each with its JVM started once. Scores and the
tie-break (by docid) are Anserini's own, so a run equals ``SearchCollection``'s exactly.

Layers: :func:`write_topics` (pure), :class:`BM25Searcher` (loads once per actor), :func:`retrieve_dataset`
and :func:`retrieve_to_file` (Ray wiring, the run file and its manifest).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.io import storage
from inpars_ray.io.catalog import Collection
from inpars_ray.io.load import LoadConfig
from inpars_ray.io.manifest import StageRecord, collection_key, input_key
from inpars_ray.io.stage import StageResult, run_once
from inpars_ray.io.trec import read_trec_run, run_spec, write_trec_stream
from inpars_ray.stageconfig import Field, stage_config
from inpars_ray.stages.lucene import local_index, lucene_path


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
    searcher_heap_mb: int | None = Field(None, ge=64, description="maximum heap (-Xmx) of each searcher's JVM in "
                                         "MB (the indexer's is index.java_heap_mb); null: the JVM's default, a "
                                         "quarter of the machine's memory")


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


class BM25Searcher:
    """Searches batches of queries with Anserini's ``SearchCollection``; the JVM starts once per instance.

    Use directly (``BM25Searcher(index_dir, k)(queries)``) or as a Ray Data callable class. ``index_dir`` may
    be a URI (pass a :class:`inpars_ray.io.storage.Location` to Ray actors: it carries its filesystem's options).
    """

    def __init__(self, index_dir: storage.PathLike, k: int, config: BM25Config = BM25Config()) -> None:
        from inpars_ray.runtime.java import autoclass, start_jvm

        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        start_jvm(config.searcher_heap_mb)
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


class BM25PairScorer:
    """Anserini's BM25 score of given (query, document) pairs, with the index's analyzer and this config's k1
    and b: for a document a search returns, the score the search gives it; for any other, the score it would
    have. A teacher fuses it beside its neural rankers. Loads the index reader once per actor.
    """

    def __init__(self, index_dir: storage.PathLike, config: BM25Config = BM25Config(),
                 score_column: str = S.SCORE) -> None:
        from inpars_ray.runtime.java import autoclass, start_jvm

        start_jvm(config.searcher_heap_mb)
        self._utils = autoclass("io.anserini.index.IndexReaderUtils")
        self._reader = self._utils.getReader(str(local_index(index_dir)))
        self._similarity = autoclass("org.apache.lucene.search.similarities.BM25Similarity")(config.k1, config.b)
        self.score_column = score_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        S.require_columns(batch.column_names, [S.QUERY, S.DOC_ID], "bm25 pair scores")
        score = self._utils.computeQueryDocumentScoreWithSimilarity
        values = [float(score(self._reader, doc, _clean_query(query), self._similarity))
                  for query, doc in zip(batch.column(S.QUERY).to_pylist(), batch.column(S.DOC_ID).to_pylist())]
        return batch.append_column(self.score_column, pa.array(values, pa.float64()))


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


def retrieve_to_file(collection: Collection, index_dir: str | os.PathLike[str], out: str | os.PathLike[str],
                     config: RetrieveConfig = RetrieveConfig(), load_config: LoadConfig = LoadConfig()) -> StageResult:
    """Search the collection's queries (of ``config.split``) and write a TREC run to ``out``.

    Hits stream from the Ray actors into the file, so the driver never holds the whole run. A manifest
    ``<out>.manifest.json`` is written last; a rerun with the same index and config does nothing.
    """
    out = storage.location(out)
    storage.check_reachable(out)
    lucene_path(index_dir)
    # inputs by content: the index's manifest, the collection's files (its queries and qrels)
    stage_config = {"index": input_key(index_dir, stage="index"), "collection": collection_key(collection),
                    "retrieve": config}
    return run_once(run_spec("retrieve", out, stage_config),
                    lambda record: _search(record, collection, index_dir, out, config, load_config))


def _search(record: StageRecord, collection: Collection, index_dir: storage.PathLike, out: storage.Location,
            config: RetrieveConfig, load_config: LoadConfig) -> None:
    import ray

    from inpars_ray.io.load import read_qrels, read_queries

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
