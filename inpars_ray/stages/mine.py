"""Stage — mine: BM25 negatives for the kept synthetic queries, written as training triples.

For each kept query, BM25 retrieves the top ``depth`` documents of the collection (InPars: 1000); ``n``
negatives (InPars-v2: one) are drawn uniformly, without replacement, from those hits. The query's own
source document is never a negative (the reference toolkit, github.com/zetaalphavector/InPars, forgot this;
v1 excluded it). The draw for a query uses a numpy Generator seeded from (seed, a stable hash of the query
id), so it does not depend on cluster size, block boundaries or the order queries arrive in. A query with
fewer eligible hits than ``n`` keeps the negatives it has and is listed in ``short_queries/`` with its
counts.

Layers: :func:`sample_negatives` / :func:`mine_batch` / :func:`explode` are pure; :class:`NegativeMiner`
is the Ray actor, which opens the index once (it holds a :class:`inpars_ray.stages.retrieve.BM25Searcher`, the
searcher :func:`inpars_ray.stages.retrieve.retrieve_dataset` uses) and samples right after searching, while every
hit of a query and its positive are in the same call — so the depth-1000 run (1000 rows per query) never
has to be shuffled. :func:`run_mine` wires it into Ray Data and joins the texts from the corpus by id
(:func:`inpars_ray.stages.ranker_input.join_documents`).
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S
from inpars_ray.errors import InparsError
from inpars_ray.io import artifacts, storage
from inpars_ray.io.catalog import Collection
from inpars_ray.io.load import LoadConfig
from inpars_ray.io.manifest import StageRecord, collection_key, input_key, published
from inpars_ray.io.stage import StageResult, StageSpec, run_once
from inpars_ray.io.text import document_texts
from inpars_ray.runtime.exchange import corpus_documents, left_join_unique
from inpars_ray.schema import KEPT_DIR
from inpars_ray.stageconfig import Field, stage_config
from inpars_ray.stages.dense_negatives import DenseNegativesConfig
from inpars_ray.stages.ranker_input import join_documents
from inpars_ray.stages.retrieve import BM25Config

logger = logging.getLogger(__name__)

TRIPLES_DIR, SHORT_DIR, TSV_NAME = "triples", "short_queries", "triples.tsv"
NO_HITS, TOO_FEW_HITS = "no_hits", "too_few_hits"
_NEG_IDS, _NEG_RANKS = "neg_doc_ids", "neg_ranks"
#: one row per query after mining: its negatives as lists, and the counts the report needs
MINED = pa.schema([
    pa.field(S.QUERY_ID, pa.string()), pa.field(S.QUERY, pa.string()), pa.field(S.POS_DOC_ID, pa.string()),
    pa.field(S.FILTER_SCORE, pa.float64()), pa.field(_NEG_IDS, pa.list_(pa.string())),
    pa.field(_NEG_RANKS, pa.list_(pa.int64())), pa.field(S.NUM_HITS, pa.int64()),
    pa.field(S.NUM_ELIGIBLE, pa.int64()), pa.field(S.POS_RANK, pa.int64()),
])


@stage_config
class MineConfig:
    """How negatives are mined (defaults: InPars-v2, arXiv 2301.01820)."""

    depth: int = Field(1000, ge=1, description="BM25 hits retrieved per query, the pool negatives are drawn from "
                       "(InPars: 1000)")
    negatives: int = Field(1, ge=1, description="negatives drawn per query (InPars-v2 paper: 1); each makes one triple")
    seed: int = Field(1, ge=0, description="seed of the draws; the same seed gives the same triples on any cluster")
    dense: DenseNegativesConfig | None = Field(None, description="also draw negatives from a bi-encoder's top "
                                               "hits (never the positive or a near-copy of it); None: BM25 only")
    bm25: BM25Config = Field(BM25Config(remove_query=False), description="BM25 settings; remove_query is off "
                             "because synthetic query ids are not document ids")
    queries_per_call: int = Field(2000, ge=1, description="queries an actor searches per call")
    num_actors: int = Field(1, ge=1, description="searcher actors (each starts its own JVM and opens the index once)")
    shuffle_partitions: int = Field(8, ge=1, description="partitions of the hash joins that attach document texts")


# --- pure functions -------------------------------------------------------------------------------------
def query_rng(seed: int, query_id: str) -> np.random.Generator:
    """The random generator of one query: seeded by (seed, 64-bit blake2b of the query id)."""
    digest = int.from_bytes(hashlib.blake2b(query_id.encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, digest])


def sample_negatives(query_id: str, pos_doc_id: str, hit_ids: np.ndarray, hit_ranks: np.ndarray, n: int,
                     seed: int) -> tuple[list[str], list[int], int, int | None]:
    """Draw ``n`` negatives uniformly without replacement from a query's hits, never its positive.

    ``hit_ids``/``hit_ranks`` are the query's BM25 hits in rank order. Returns (negative ids, their ranks,
    in rank order; number of eligible hits; rank of the positive among the hits or None).
    """
    is_pos = hit_ids == pos_doc_id
    pos_rank = int(hit_ranks[is_pos][0]) if is_pos.any() else None
    ids, ranks = hit_ids[~is_pos], hit_ranks[~is_pos]
    take = min(n, len(ids))
    chosen = np.sort(query_rng(seed, query_id).choice(len(ids), size=take, replace=False)) if take else np.zeros(0, int)
    return [str(ids[i]) for i in chosen], [int(ranks[i]) for i in chosen], int(len(ids)), pos_rank


def mine_batch(queries: pa.Table, hits: pa.Table, n: int, seed: int) -> pa.Table:
    """One :data:`MINED` row per query of ``queries`` (query_id, query, doc_id, [filter_score]), from
    ``hits`` (:data:`schema.RUN` rows of those queries)."""
    S.require_columns(queries.column_names, [S.QUERY_ID, S.QUERY, S.DOC_ID], "mine")
    hits = hits.take(pc.sort_indices(hits, [(S.QUERY_ID, "ascending"), (S.RANK, "ascending")]))
    hit_q = hits.column(S.QUERY_ID).to_numpy(zero_copy_only=False).astype(object)
    hit_d = hits.column(S.DOC_ID).to_numpy(zero_copy_only=False).astype(object)
    hit_r = hits.column(S.RANK).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, hit_q[1:] != hit_q[:-1]]) if len(hit_q) else np.array([], dtype=int)
    span = {hit_q[s]: (s, e) for s, e in zip(starts, np.r_[starts[1:], len(hit_q)])}
    scores = (queries.column(S.FILTER_SCORE).to_pylist() if S.FILTER_SCORE in queries.column_names
              else [None] * queries.num_rows)
    rows = []
    for qid, query, pos, score in zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist(),
                                      queries.column(S.DOC_ID).to_pylist(), scores):
        s, e = span.get(qid, (0, 0))
        negs, ranks, eligible, pos_rank = sample_negatives(qid, pos, hit_d[s:e], hit_r[s:e], n, seed)
        rows.append({S.QUERY_ID: qid, S.QUERY: query, S.POS_DOC_ID: pos, S.FILTER_SCORE: score, _NEG_IDS: negs,
                     _NEG_RANKS: ranks, S.NUM_HITS: e - s, S.NUM_ELIGIBLE: eligible, S.POS_RANK: pos_rank})
    return pa.Table.from_pylist(rows, schema=MINED)


def short_report(mined: pa.Table, n: int) -> pa.Table:
    """Queries that got fewer than ``n`` negatives, as :data:`schema.MINE_SHORT`."""
    short = mined.filter(pc.less(mined.column(S.NUM_ELIGIBLE), n))
    reason = pc.if_else(pc.equal(short.column(S.NUM_HITS), 0), NO_HITS, TOO_FEW_HITS)
    return short.append_column(S.DROP_REASON, reason).select(S.MINE_SHORT.names).cast(S.MINE_SHORT)


def explode(mined: pa.Table) -> pa.Table:
    """One row per (query, negative): the triple without its texts."""
    parent = pc.list_parent_indices(mined.column(_NEG_IDS))
    rows = mined.select([S.QUERY_ID, S.QUERY, S.POS_DOC_ID, S.FILTER_SCORE]).take(parent)
    return (rows.append_column(S.NEG_DOC_ID, pc.list_flatten(mined.column(_NEG_IDS)))
            .append_column(S.NEG_RANK, pc.list_flatten(mined.column(_NEG_RANKS))))


def attach_text(rows: pa.Table, docs: pa.Table, key: str, column: str) -> pa.Table:
    """Add ``column``: the text of the document whose id is in ``key``; a missing document is an error."""
    texts = document_texts(docs.column(S.TITLE), docs.column(S.TEXT))
    out = left_join_unique(rows, pa.table({S.DOC_ID: docs.column(S.DOC_ID), column: texts}), key, S.DOC_ID)
    missing = out.filter(pc.is_null(out.column(column)))
    if missing.num_rows:
        raise InparsError(f"document {missing.column(key)[0].as_py()!r} ({key}) is not in the corpus: the index "
                          "or the filtered queries were made from another version of the collection")
    return out


def tsv_field(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Text safe for one TSV field: tabs and line breaks become spaces."""
    return pc.replace_substring_regex(values, pattern=r"[\t\r\n]", replacement=" ")


# --- the actor ----------------------------------------------------------------------------------------
class NegativeMiner:
    """Ray Data UDF: BM25-searches a batch of queries and samples their negatives; opens the index once."""

    def __init__(self, index_dir: storage.PathLike, config: MineConfig) -> None:
        from inpars_ray.stages.retrieve import BM25Searcher

        self.config = config
        self.searcher = BM25Searcher(index_dir, config.depth, config.bm25)

    def __call__(self, batch: pa.Table) -> pa.Table:
        hits = self.searcher(batch.select([S.QUERY_ID, S.QUERY]))
        return mine_batch(batch, hits, self.config.negatives, self.config.seed)

    def __str__(self) -> str:
        return f"BM25negatives(depth={self.config.depth}, n={self.config.negatives})"


# --- Ray wiring -------------------------------------------------------------------------------------------
def run_mine(queries_dir: storage.PathLike, collection: Collection, index_dir: storage.PathLike,
             out_dir: storage.PathLike, config: MineConfig = MineConfig(),
             load_config: LoadConfig = LoadConfig()) -> StageResult:
    """Mine negatives for the queries in ``queries_dir`` and write ``triples/``, ``short_queries/`` and, last,
    the manifest listing them to ``out_dir`` (local or ``gs://``).

    ``queries_dir`` is a filter output (the ``kept/`` files its manifest lists are read) or any folder of
    Parquet queries. A rerun with the same inputs (by content: the filter's and the index's manifests) and
    config does nothing.
    """
    from inpars_ray.stages.lucene import lucene_path

    out = storage.location(out_dir)
    storage.check_reachable(out, queries_dir, index_dir)
    lucene_path(index_dir)  # fail early on a missing or incomplete index
    files, queries_key = published(queries_dir, ("filter", "consistency"), KEPT_DIR)
    stage_config = {"queries": queries_key, "dataset": collection_key(collection),
                    "index": input_key(index_dir, stage="index"), "mine": config, "load": load_config}
    if config.dense is not None:  # a model retrained in place mines again
        from inpars_ray.io.manifest import artifact_key

        stage_config["dense_model"] = artifact_key(config.dense.model)
    spec = StageSpec("mine", out, stage_config, outputs=(TRIPLES_DIR, SHORT_DIR), stale=(TSV_NAME,))

    def body(record: StageRecord) -> None:
        if not files:
            raise InparsError(f"mine: no queries (Parquet files) in {storage.location(queries_dir)}")
        mine_dataset(artifacts.read_parquet_dataset(files), collection, index_dir, out, config, load_config, record)

    return run_once(spec, body)


def mine_dataset(queries: Any, collection: Collection, index_dir: storage.PathLike,
                 out_dir: storage.PathLike, config: MineConfig, load_config: LoadConfig = LoadConfig(),
                 record: StageRecord | None = None) -> dict[str, int]:
    """Mining over a Ray Dataset of queries: writes ``triples/`` and ``short_queries/`` under ``out_dir`` and
    returns the counts (``run_mine`` adds the manifest and the resume check)."""
    import ray

    out = storage.location(out_dir)
    record = record or StageRecord("mine", config)
    names = queries.schema().names
    S.require_columns(names, [S.QUERY_ID, S.QUERY, S.DOC_ID], "mine (queries)")
    queries = queries.select_columns([c for c in (S.QUERY_ID, S.QUERY, S.DOC_ID, S.FILTER_SCORE) if c in names])
    # the queries are few (the filter kept them): materialize them so that no read task has to wait for
    # CPUs the searcher actors hold, and never ask for more CPUs per actor than the cluster has
    queries = queries.materialize()
    cpus = max(1, min(config.bm25.threads, int(ray.cluster_resources().get("CPU", 1))))
    with record.timed("search_and_sample"):
        mined = queries.map_batches(
            NegativeMiner, fn_constructor_args=(storage.location(index_dir), config),  # carries its filesystem
            batch_size=config.queries_per_call,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=config.num_actors),
            num_cpus=cpus,
        ).materialize()
    dense_counts: dict[str, int] = {}
    if config.dense is not None:
        from inpars_ray.stages.dense_negatives import add_dense_negatives

        with record.timed("dense_negatives"):
            table = pa.concat_tables([pa.Table.from_batches([], MINED), *ray.get(mined.to_arrow_refs())])
            table, dense_counts = add_dense_negatives(table, corpus_documents(collection, load_config), config.dense,
                                                      config.seed, _NEG_IDS, _NEG_RANKS)
            mined = ray.data.from_arrow(table).materialize()
    with record.timed("search_and_sample"):
        mined.map_batches(short_report, fn_kwargs={"n": config.negatives},
                          batch_format="pyarrow").write_parquet((out / SHORT_DIR).path, filesystem=out.fs, **artifacts.PARQUET_WRITE)
    with record.timed("attach_texts"):
        triples = mined.map_batches(explode, batch_format="pyarrow")
        for key, column in ((S.POS_DOC_ID, S.POS_TEXT), (S.NEG_DOC_ID, S.NEG_TEXT)):
            triples = join_documents(triples, collection, load_config, attach_text, on=key,
                                     partitions=config.shuffle_partitions, key=key, column=column)
        triples.map_batches(lambda b: b.select(S.TRIPLES.names).cast(S.TRIPLES),
                            batch_format="pyarrow").write_parquet((out / TRIPLES_DIR).path, filesystem=out.fs, **artifacts.PARQUET_WRITE)
    counts = _mined_counts(mined, config.negatives)
    counts["triples"] += dense_counts.get("dense_negatives", 0)
    record.counts.update(queries=queries.count(), **counts, **dense_counts)
    return record.counts


def _mined_counts(mined: Any, n: int) -> dict[str, int]:
    def summarise(b: pa.Table) -> pa.Table:
        eligible, hits = b.column(S.NUM_ELIGIBLE), b.column(S.NUM_HITS)
        return pa.table({
            "triples": [pc.sum(pc.min_element_wise(eligible, n)).as_py() or 0],
            "short_queries": [pc.sum(pc.less(eligible, n).cast(pa.int64())).as_py() or 0],
            "no_hit_queries": [pc.sum(pc.equal(hits, 0).cast(pa.int64())).as_py() or 0],
            "positive_in_hits": [pc.sum(pc.is_valid(b.column(S.POS_RANK)).cast(pa.int64())).as_py() or 0],
            "hits": [pc.sum(hits).as_py() or 0],
        })

    parts = list(mined.map_batches(summarise, batch_format="pyarrow", batch_size=None)
                 .iter_batches(batch_format="pyarrow", batch_size=None))
    return {name: int(sum(p.column(name)[0].as_py() for p in parts)) for name in
            ("triples", "short_queries", "no_hit_queries", "positive_in_hits", "hits")}


def export_tsv(out_dir: storage.PathLike, path: storage.PathLike | None = None) -> storage.Location:
    """Write the triples of ``out_dir`` as ``query<TAB>positive<TAB>negative`` lines (the reference toolkit's
    training format), ordered by query id then negative rank; returns where it was written."""
    out = storage.location(out_dir)
    target = storage.location(path) if path else out / TSV_NAME
    files, _ = published(out, "mine", TRIPLES_DIR)
    table = artifacts.read_parquet_table(files, columns=[S.QUERY_ID, S.NEG_RANK, S.QUERY, S.POS_TEXT, S.NEG_TEXT])
    table = table.take(pc.sort_indices(table, [(S.QUERY_ID, "ascending"), (S.NEG_RANK, "ascending")]))
    with target.open_output() as fh:
        for q, p, n in zip(*(tsv_field(table.column(c)).to_pylist() for c in (S.QUERY, S.POS_TEXT, S.NEG_TEXT))):
            fh.write(f"{q}\t{p}\t{n}\n".encode())
    return target
