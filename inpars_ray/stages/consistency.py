"""Filter strategy — consistency (InPars-light, Boytsov et al. 2023): keep a synthetic query only if a
ranker puts its source document in the top ``k`` of the query's BM25 hits.

The recipe, in the order a pipeline runs it:

1. the usual checks of :mod:`inpars_ray.stages.filter` (errors, copies, duplicates...) with no top-k cut: the
   survivors are the *candidates*;
2. mine negatives for every candidate and train a ranker on all of them (:mod:`inpars_ray.stages.mine`,
   :mod:`inpars_ray.stages.train`), or take any ranker you trust (a zero-shot one works too);
3. this stage: BM25 top-``depth`` of every candidate query, each hit scored by that ranker, and the query is
   kept when its source document ranks within the top ``k`` (k=3 in InPars-light); a source document BM25
   did not retrieve is not ranked, so that query is dropped (reason ``inconsistent``);
4. mine and train the final ranker on the kept queries only.

Layers: :func:`source_ranks` (pure, over one query-grouped Arrow table of scored hits),
:func:`consistency_split` (pure: kept / dropped rows), and :func:`run_consistency` (Ray wiring: BM25 on Ray
actors, the hit texts joined by :func:`inpars_ray.stages.ranker_input.join_documents`, scoring with
:func:`inpars_ray.models.rankers.score_dataset`). Every candidate row ends in ``kept/`` (:data:`schema.FILTERED`) or ``dropped/``
(:data:`schema.FILTER_DROPPED`); the manifest counts both and the rank distribution.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError, InparsError
from inpars_ray.io import artifacts, storage
from inpars_ray.io.catalog import Collection
from inpars_ray.io.load import LoadConfig
from inpars_ray.io.manifest import StageRecord
from inpars_ray.io.stage import StageResult, StageSpec, run_once
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.schema import DROPPED_DIR, KEPT_DIR
from inpars_ray.stageconfig import Field, stage_config
from inpars_ray.stages.ranker_input import join_documents, query_of, text_of

logger = logging.getLogger(__name__)

STAGE = "consistency"
INCONSISTENT = "inconsistent"
SOURCE_RANK = "source_rank"


@stage_config
class ConsistencyConfig:
    """The consistency filter (InPars-light)."""

    ranker: RankerConfig = Field(description="the ranker (model: a folder or Hugging Face id; InPars-light trains "
                                 "it on all candidates) and how it is fed")
    k: int = Field(3, ge=1, description="a query is kept when its source document ranks within the top k "
                   "(InPars-light: 3)")
    depth: int = Field(100, ge=1, description="BM25 hits per candidate query that the ranker reorders")
    num_actors: int = Field(1, ge=1, description="ranker actors")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each actor reserves (0 on CPU; set it with "
                                      "ranker.device cuda)")
    rows_per_call: int = Field(512, ge=1, description="pairs handed to an actor per call")
    partitions: int = Field(4, ge=1, description="hash partitions of the join with the corpus and of the "
                            "regrouping by query")

    def __post_init__(self) -> None:
        if not self.ranker.model:
            raise ConfigError("consistency: a ranker model is required")
        if self.k > self.depth:
            raise ConfigError(f"consistency: k={self.k} is deeper than the BM25 depth={self.depth}")


# --- pure functions --------------------------------------------------------------------------------------
def source_ranks(scored: pa.Table) -> pa.Table:
    """Per query: the rank (1 = best) of its source document among its scored hits, null if not a hit.

    ``scored`` holds every scored hit of the queries it names (``query_id``, ``doc_id``, ``score``,
    ``pos_doc_id``); ties are broken by doc id, as in reranked runs.
    """
    S.require_columns(scored.column_names, [S.QUERY_ID, S.DOC_ID, S.SCORE, S.POS_DOC_ID], STAGE)
    if scored.num_rows == 0:
        return pa.table({S.QUERY_ID: pa.array([], pa.string()), SOURCE_RANK: pa.array([], pa.int64())})
    order = pc.sort_indices(scored, [(S.QUERY_ID, "ascending"), (S.SCORE, "descending"), (S.DOC_ID, "ascending")])
    rows = scored.take(order)
    qids = rows.column(S.QUERY_ID).to_numpy(zero_copy_only=False)
    docs = rows.column(S.DOC_ID).to_numpy(zero_copy_only=False)
    pos = rows.column(S.POS_DOC_ID).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]])
    ends = np.r_[starts[1:], len(qids)]
    out_q, out_r = [], []
    for s, e in zip(starts, ends):
        hit = np.flatnonzero(docs[s:e] == pos[s])
        out_q.append(qids[s])
        out_r.append(int(hit[0]) + 1 if len(hit) else None)
    return pa.table({S.QUERY_ID: pa.array(out_q, pa.string()), SOURCE_RANK: pa.array(out_r, pa.int64())})


def consistency_split(candidates: pa.Table, ranks: pa.Table, k: int) -> tuple[pa.Table, pa.Table]:
    """(kept, dropped) candidate rows: kept when the source rank is at most ``k``.

    ``filter_score`` of every row becomes ``-source_rank`` (NaN-free; a missed source gets ``-inf``), so
    kept rows sort best-first like the other strategies' output.
    """
    S.require_columns(candidates.column_names, S.FILTERED.names, STAGE)
    rank_of = dict(zip(ranks.column(S.QUERY_ID).to_pylist(), ranks.column(SOURCE_RANK).to_pylist()))
    r = [rank_of.get(q) for q in candidates.column(S.QUERY_ID).to_pylist()]
    keep = np.array([x is not None and x <= k for x in r], dtype=bool)
    score = pa.array([-float(x) if x is not None else float("-inf") for x in r], pa.float64())
    table = candidates.set_column(candidates.schema.get_field_index(S.FILTER_SCORE), S.FILTER_SCORE, score)
    kept = table.filter(pa.array(keep)).select(S.FILTERED.names).cast(S.FILTERED)
    dropped = table.filter(pa.array(~keep))
    dropped = dropped.append_column(S.DROP_REASON, pa.array([INCONSISTENT] * dropped.num_rows, pa.string()))
    return kept, dropped.select(S.FILTER_DROPPED.names).cast(S.FILTER_DROPPED)


# --- Ray wiring ------------------------------------------------------------------------------------------
def _attach(hits: pa.Table, docs: pa.Table, queries: pa.Table) -> pa.Table:
    """Hits of one part with the query text, the hit's document text and the query's source doc."""
    return pa.table({S.QUERY_ID: hits.column(S.QUERY_ID), S.DOC_ID: hits.column(S.DOC_ID),
                     S.QUERY: query_of(hits, queries), S.POS_DOC_ID: query_of(hits, queries, S.DOC_ID),
                     S.TEXT: text_of(hits, docs)})


def _ranks_of_partition(batch: pa.Table) -> pa.Table:
    return source_ranks(batch.select([S.QUERY_ID, S.DOC_ID, S.SCORE, S.POS_DOC_ID]))


def run_consistency(candidates_dir: storage.PathLike, collection: Collection, index_dir: storage.PathLike,
                    out_dir: storage.PathLike, config: ConsistencyConfig,
                    load_config: LoadConfig = LoadConfig()) -> StageResult:
    """Keep the candidates (a filter output folder or its ``kept/``) whose source document the ranker puts in
    its top ``k``; writes ``kept/``, ``dropped/`` and, last, the manifest listing them to ``out_dir`` (a local
    folder or ``gs://...``). A rerun with the same inputs and config does nothing."""
    from inpars_ray.io.manifest import artifact_key, collection_key, input_key, published

    out = storage.location(out_dir)
    storage.check_reachable(out, candidates_dir, index_dir)
    # keyed by content (the filter's manifest, the collection, the index, the model), never by paths
    files, candidates_key = published(candidates_dir, "filter", KEPT_DIR)
    stage_config = {"candidates": candidates_key, "dataset": collection_key(collection),
                    "index": input_key(index_dir, stage="index"), "model": artifact_key(config.ranker.model),
                    "consistency": config, "load": load_config}
    return run_once(StageSpec(STAGE, out, stage_config, outputs=(KEPT_DIR, DROPPED_DIR)),
                    lambda record: _check(record, files, candidates_dir, collection, index_dir, out, config, load_config))


def _check(record: StageRecord, files: list[storage.Location], candidates_dir: storage.PathLike,
           collection: Collection, index_dir: storage.PathLike, out: storage.Location, config: ConsistencyConfig,
           load_config: LoadConfig) -> None:
    import pyarrow.parquet as pq
    import ray

    from inpars_ray.models.rankers import score_dataset
    from inpars_ray.runtime.exchange import hash_exchange
    from inpars_ray.stages import retrieve

    if not files:
        raise InparsError(f"consistency: no candidate queries (Parquet files) in {storage.location(candidates_dir)}")
    candidates = artifacts.read_parquet_table(files).select(S.FILTERED.names).cast(S.FILTERED)
    n_in = candidates.num_rows
    queries = candidates.select([S.QUERY_ID, S.QUERY, S.DOC_ID])
    with record.timed("bm25"):
        hits = retrieve.retrieve_dataset(index_dir, ray.data.from_arrow(queries.select([S.QUERY_ID, S.QUERY])),
                                     config.depth).materialize()
    with record.timed("score"):
        joined = join_documents(hits, collection, load_config, _attach, partitions=config.partitions,
                                queries=queries)
        pairs = joined.filter(lambda r: r[S.TEXT] is not None)
        ranker = config.ranker.resolved()
        scored = score_dataset(pairs, ranker, num_actors=config.num_actors, batch_rows=config.rows_per_call,
                               num_gpus_per_actor=config.num_gpus_per_actor)
        ranks = hash_exchange([scored.select_columns([S.QUERY_ID, S.DOC_ID, S.SCORE, S.POS_DOC_ID])],
                              [S.QUERY_ID], config.partitions, _ranks_of_partition)
        parts = list(ranks.iter_batches(batch_format="pyarrow", batch_size=None))
        rank_table = pa.concat_tables(parts) if parts else source_ranks(pa.table(
            {c: pa.array([], pa.string()) for c in (S.QUERY_ID, S.DOC_ID, S.POS_DOC_ID)} | {S.SCORE: pa.array([], pa.float64())}))
    kept, dropped = consistency_split(candidates, rank_table, config.k)
    if kept.num_rows + dropped.num_rows != n_in:
        raise InparsError(f"consistency accounted for {kept.num_rows + dropped.num_rows} of {n_in} candidates")
    for name, table in ((KEPT_DIR, kept), (DROPPED_DIR, dropped)):
        with (out / name / f"part-{artifacts.attempt_id()}.parquet").open_output() as fh:
            pq.write_table(table, fh, **artifacts.PARQUET_WRITE)
    r = [x for x in rank_table.column(SOURCE_RANK).to_pylist() if x is not None]
    record.counts.update(candidates=n_in, kept=kept.num_rows, **{f"dropped_{INCONSISTENT}": dropped.num_rows},
                         source_not_retrieved=n_in - len(r), source_rank_1=sum(x == 1 for x in r))
    record.extra["ranker"] = dataclasses.asdict(ranker)
