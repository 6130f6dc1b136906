"""Stage 6 — rerank: rescoring of a first-stage run by a ranker (InPars reranks BM25's top 1000).

Layers:

* pure functions over Arrow batches: :func:`attach_texts` (run rows + query text + document text, the
  document as BEIR flat indexes join it), :func:`rank_with_tail`, and, from :mod:`inpars_ray.models.ranking`
  (shared with the PyTerrier reranker), :func:`rank_by_score` (ranks within each query by descending
  score, ties broken by doc id) and :func:`blend_first_stage`;
* the scoring actor is :class:`inpars_ray.models.rankers.RankerUDF` (monoT5, cross-encoder or bi-encoder, read
  from the checkpoint), the same scorer the InPars-v2 filter uses;
* :func:`rerank_run` wires them into Ray: the run is streamed from its file, its documents' texts joined by
  :func:`inpars_ray.stages.ranker_input.join_documents` (no process holds the corpus or all pairs), scored
  by a pool of actors, regrouped by query id for ranking, and streamed into a TREC run file.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.io import storage
from inpars_ray.io.catalog import Collection
from inpars_ray.io.load import LoadConfig
from inpars_ray.io.manifest import StageRecord
from inpars_ray.io.stage import StageResult
from inpars_ray.models.rankers import RankerConfig

# the pure ranking lives with the models (the PyTerrier reranker ranks through it too); named here for callers
from inpars_ray.models.ranking import (  # noqa: F401
    FIRST_STAGE_SCORE,
    blend_first_stage,
    rank_by_score,
    ranks_within_runs,
)
from inpars_ray.runtime.exchange import hash_exchange
from inpars_ray.stageconfig import Field, stage_config
from inpars_ray.stages.ranker_input import join_documents, query_of, text_of

logger = logging.getLogger(__name__)
RESCORED = "rescored"  #: column of :func:`rank_with_tail`: True for a hit the ranker scored


@stage_config
class RerankConfig:
    """Reranking settings."""

    ranker: RankerConfig = Field(description="the ranker and how it is fed (model, family, max_length, "
                                 "batch_size, device...): the settings filter, consistency and the teacher share")
    depth: int = Field(1000, ge=1, description="hits per query that are rescored (InPars: the BM25 top 1000)")
    keep_tail: bool = Field(True, description="hits below depth follow the rescored ones, in first-stage "
                            "order, so that recall at cutoffs deeper than depth stays the first stage's; "
                            "False drops them")
    rows_per_call: int = Field(256, ge=1, description="pairs handed to one actor call")
    num_actors: int = Field(1, ge=1, description="scoring actors")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each actor reserves (0 on CPU)")
    partitions: int = Field(4, ge=1, description="hash partitions of the run/corpus join and of the "
                            "regrouping by query")
    first_stage_weight: float = Field(0.0, ge=0.0, le=1.0, description="weight of the first-stage score in "
                                      "the final one: per query, both scores are min-max scaled to [0, 1] and "
                                      "mixed as (1-w)*ranker + w*first stage (0: the ranker alone)")


def attach_texts(run: pa.Table, docs: pa.Table, queries: pa.Table) -> pa.Table:
    """Run rows with the query text (:data:`schema.QUERY`) and document text (:data:`schema.TEXT`).

    A hit whose document or query is unknown keeps a null text (counted and left unscored by the caller).
    """
    S.require_columns(run.column_names, [S.QUERY_ID, S.DOC_ID, S.RANK, S.SCORE], "rerank (run)")
    return (run.select([S.QUERY_ID, S.DOC_ID, S.RANK, S.SCORE])
            .rename_columns([S.QUERY_ID, S.DOC_ID, "first_stage_rank", FIRST_STAGE_SCORE])
            .append_column(S.QUERY, query_of(run, queries))
            .append_column(S.TEXT, text_of(run, docs)))


def rank_with_tail(scored: pa.Table, tail: pa.Table, first_stage_weight: float = 0.0) -> pa.Table:
    """:func:`rank_by_score` of the rescored hits, then each query's deeper first-stage hits in their order.

    A tail hit's score is its query's lowest rescored score minus its distance below the rescored depth, so
    the file's scores decrease with rank (evaluation tools sort by score, not by the rank column).
    """
    head = rank_by_score(scored, first_stage_weight)
    if tail.num_rows == 0:
        return head.append_column(RESCORED, pa.array([True] * head.num_rows, pa.bool_()))
    tail = tail.take(pc.sort_indices(tail, [(S.QUERY_ID, "ascending"), (S.RANK, "ascending")]))
    k = ranks_within_runs(tail.column(S.QUERY_ID))
    # each query's last rescored row (rank_by_score sorts by query, then descending score): its rank, its score
    ranks = head.column(S.RANK).to_numpy()
    last = head.filter(pa.array(np.append(ranks[1:] == 1, True) if head.num_rows else np.zeros(0, dtype=bool)))
    pos = pc.index_in(tail.column(S.QUERY_ID), value_set=last.column(S.QUERY_ID))
    n = pc.fill_null(last.column(S.RANK).take(pos), 0).to_numpy(zero_copy_only=False)  # no rescored hit: 0, 0.0
    low = pc.fill_null(last.column(S.SCORE).take(pos), 0.0).to_numpy(zero_copy_only=False)
    deep = pa.table({S.QUERY_ID: tail.column(S.QUERY_ID), S.DOC_ID: tail.column(S.DOC_ID),
                     S.RANK: pa.array(n + k, pa.int64()), S.SCORE: pa.array(low - k, pa.float64())}, schema=S.RUN)
    both = pa.concat_tables([head, deep]).append_column(
        RESCORED, pa.array([True] * head.num_rows + [False] * deep.num_rows, pa.bool_()))
    return both.take(pc.sort_indices(both, [(S.QUERY_ID, "ascending"), (S.RANK, "ascending")]))


def _read_run_dataset(run: storage.Location, depth: int, deeper: bool = False) -> Any:
    """The run's hits ranked at most ``depth`` (or, with ``deeper``, those ranked below it) as a Dataset."""
    import ray

    # a TREC run is read in blocks by Ray (read_text), never whole by the driver
    def parse(batch: dict) -> pa.Table:
        rows = [line.split() for line in batch["text"] if line.strip()]
        table = pa.table({S.QUERY_ID: [r[0] for r in rows], S.DOC_ID: [r[2] for r in rows],
                          S.RANK: pa.array([int(r[3]) for r in rows], pa.int64()),
                          S.SCORE: pa.array([float(r[4]) for r in rows], pa.float64())}, schema=S.RUN)
        rank = table.column(S.RANK)
        return table.filter(pc.greater(rank, depth) if deeper else pc.less_equal(rank, depth))

    return ray.data.read_text(run.path, filesystem=run.fs).map_batches(parse, batch_format="numpy")


def in_query_order(pairs: pa.Table) -> pa.Table:
    """Pairs sorted by (query id, document id): the order they are scored in."""
    return pairs.sort_by([(S.QUERY_ID, "ascending"), (S.DOC_ID, "ascending")])


def run_key(run: storage.Location) -> str:
    """A run file's key by content: its manifest's hash when a stage wrote it, else its name, size and mtime."""
    from inpars_ray.io.manifest import input_key
    from inpars_ray.io.trec import run_manifest_name

    if run.parent.join(run_manifest_name(run)).is_file():
        return input_key(run.parent, run_manifest_name(run))
    info = run.fs.get_file_info(run.path)
    return f"{run.name}:{info.size}:{info.mtime_ns}"


def pairs_with_texts(collection: Collection, run: Any, config: RerankConfig,
                     load_config: LoadConfig) -> tuple[Any, int]:
    """(Run rows with query and document text, hits whose query or document is unknown).

    The one step that fetches texts (:func:`inpars_ray.stages.ranker_input.join_documents`: the corpus's
    document store on a one-node cluster, else a hash exchange of the run with the corpus on the document id).
    """
    from inpars_ray.io.load import read_queries

    queries, _ = read_queries(collection, load_config)
    joined = join_documents(run, collection, load_config, attach_texts, partitions=config.partitions,
                            queries=queries)
    joined = joined.materialize()  # fetched once, then counted and filtered (not fetched again per use)
    known = joined.map_batches(_with_texts, batch_format="pyarrow")
    return known, joined.count() - known.count()


def _with_texts(pairs: pa.Table) -> pa.Table:
    return pairs.filter(pc.and_(pc.is_valid(pairs.column(S.TEXT)), pc.is_valid(pairs.column(S.QUERY))))


def rerank_run(collection: Collection, run_path: storage.PathLike, out_path: storage.PathLike,
               config: RerankConfig, load_config: LoadConfig = LoadConfig()) -> StageResult:
    """Rescore ``run_path`` with a ranker and write the reranked TREC run to ``out_path`` (+ its manifest).

    Paths may be local or ``gs://``; the model may be a Hugging Face id, a folder or a model published
    under a run root (each actor copies it to its own node). The stage's key names its inputs by content:
    the first-stage run's manifest, the model's manifest (a retrained model reranks again), the collection.
    """
    from inpars_ray.io.manifest import artifact_key, collection_key
    from inpars_ray.io.stage import run_once
    from inpars_ray.io.trec import run_spec

    run, out = storage.location(run_path), storage.location(out_path)
    if not run.is_file():
        raise ConfigError(f"rerank: no first-stage run at {run.uri}")
    stage_config = {"dataset": collection_key(collection), "run": run_key(run),
                    "model": artifact_key(config.ranker.model), "rerank": config}
    return run_once(run_spec("rerank", out, stage_config),
                    lambda record: _rescore(record, collection, run, out, config, load_config))


def _rescore(record: StageRecord, collection: Collection, run: storage.Location, out: storage.Location,
             config: RerankConfig, load_config: LoadConfig) -> None:
    from inpars_ray.io.trec import write_trec_stream
    from inpars_ray.models.rankers import score_dataset

    ranker = config.ranker.resolved()
    pairs, missing = pairs_with_texts(collection, _read_run_dataset(run, config.depth), config, load_config)
    if missing:
        logger.warning("%d hits name a document or query the collection lacks; they are not reranked", missing)
    # one order whatever the layout: a pair's score depends (in its last bits) on the batch it is scored
    # in, so the same pairs in the same batches make the same run on one node and on a cluster
    pairs = hash_exchange([pairs], [S.QUERY_ID], config.partitions, in_query_order)
    rescored = [0]

    def batches(ranked):
        for batch in ranked.iter_batches(batch_format="pyarrow", batch_size=None):
            if RESCORED in batch.column_names:
                rescored[0] += pc.sum(batch.column(RESCORED)).as_py() or 0
            else:
                rescored[0] += batch.num_rows
            yield batch

    # timed from the scoring on: the exchange below runs the scoring when it takes the scored blocks
    with record.timed("rerank"):
        scored = score_dataset(pairs, ranker, num_actors=config.num_actors, batch_rows=config.rows_per_call,
                               num_gpus_per_actor=config.num_gpus_per_actor)
        scored = scored.select_columns([S.QUERY_ID, S.DOC_ID, S.SCORE] + (
            [FIRST_STAGE_SCORE] if config.first_stage_weight > 0 else []))
        blend = {"first_stage_weight": config.first_stage_weight}
        if config.keep_tail:
            tail = _read_run_dataset(run, config.depth, deeper=True)
            ranked = hash_exchange([scored, tail], [S.QUERY_ID, S.QUERY_ID], config.partitions, rank_with_tail,
                                   **blend)
        else:
            ranked = hash_exchange([scored], [S.QUERY_ID], config.partitions, rank_by_score, **blend)
        rows_out, queries_out = write_trec_stream(batches(ranked), out, tag=f"inpars-ray-{ranker.family}")
    pairs_scored = rescored[0]  # the file also holds the first-stage tail below depth (keep_tail)
    record.counts.update(pairs_scored=pairs_scored, tail_rows=rows_out - pairs_scored, pairs_unknown=missing,
                         queries=len(queries_out))
    record.extra["family"] = ranker.family
    if record.timings.get("rerank"):
        record.extra["pairs_per_second"] = round(pairs_scored / record.timings["rerank"], 2)
