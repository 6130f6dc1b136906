"""Stage — teacher: pseudo-labels for the training triples, after GPL (Wang et al., arXiv 2112.07577).

Synthetic queries with hard binary labels teach a strong start model little, or make it worse (arXiv
2502.19712; DUQGen, arXiv 2404.02489). GPL instead scores every (query, positive) and (query, negative)
with a stronger *teacher* and trains the student on the teacher's scores (MarginMSE): the student learns
*how much* better the positive is, and a mined negative that is in fact relevant costs it little.

For each triple of the mine stage, the teacher scores its query against the positive and the negative;
the output is the triples with two more columns, ``pos_score`` and ``neg_score`` (the train stage's
distillation losses read them). The teacher is any ranker the engine loads (monoT5, cross-encoder,
bi-encoder), configured exactly as the rerank stage's ranker (:class:`~inpars_ray.models.rankers.RankerConfig`,
nested), or several of them fused, with BM25 beside them if wanted (``bm25_weight``; Anserini's score of
each pair on the run's index): each scorer's scores are standardised over the whole stage output (z-scores:
a per-query standardisation of one positive and one negative would leave only the sign) and mixed with
their weights. Rank fusion (RRF) is not offered here: it keeps only each pair's rank within its query's few
candidates, so a margin between the positive and a negative becomes about 1e-4 (k = 60) whatever the
teacher thought of them, and a MarginMSE student would be taught to give every pair the same score.

With ``consistency_k`` the stage also filters: a query whose source document the teacher ranks below the top
k of the documents it scored for it goes, with its triples and their rank, to ``dropped/`` (InPars-light's
consistency check, arXiv 2301.02998, on scores the teacher computes anyway).

Layers: :func:`distinct_pairs`, :func:`attach_scores` and :func:`positive_ranks` (pure, over one query's hash partition), the
scoring actors of :func:`inpars_ray.models.rankers.score_dataset` (the rerank stage's machinery: length
buckets, overlapped tokenisation, the bi-encoder's embedding cache), and :func:`run_teacher` (Ray wiring,
manifest, resume). A query's triples land in one partition, so each (query, document) pair is scored once
however many triples name it.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError, InparsError
from inpars_ray.io import artifacts, storage
from inpars_ray.io.manifest import StageRecord, artifact_key, published, to_jsonable
from inpars_ray.io.stage import StageResult, StageSpec, run_once
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.stageconfig import Field, stage_config
from inpars_ray.stages.retrieve import BM25Config

logger = logging.getLogger(__name__)

STAGE = "teacher"
TRIPLES_DIR = "triples"
DROPPED_DIR = "dropped"
POS_SCORE, NEG_SCORE = "pos_score", "neg_score"
#: the teacher's rank of a query's source document among the documents it scored for that query (1: first)
POS_RANK = "pos_rank"
Fusion = Literal["zscore"]
FUSIONS: tuple[str, ...] = get_args(Fusion)
#: the triples with the teacher's scores: what distillation trains on
SCORED_TRIPLES = pa.schema(list(S.TRIPLES) + [pa.field(POS_SCORE, pa.float64(), nullable=False),
                                               pa.field(NEG_SCORE, pa.float64(), nullable=False)])


@stage_config
class TeacherConfig:
    """Which teacher scores the triples, and how its scoring actors run."""

    rankers: tuple[RankerConfig, ...] = Field(description="the teacher: one ranker (the rerank stage's ranker "
                                              "settings), or several whose scores are fused", min_length=1)
    weights: tuple[float, ...] | None = Field(None, description="fusion weights, one per ranker (None: equal)")
    fusion: Fusion = Field("zscore", description="how several rankers' scores are mixed: zscore (each ranker's "
                        "scores standardised over all scored pairs, then the weighted sum)")
    bm25_weight: float = Field(0.0, ge=0, description="BM25's weight in the fusion, beside the rankers' weights "
                               "(which are normalised to sum 1); BM25 scores each pair on the run's index with the "
                               "run's k1 and b (0: no BM25)")
    max_negatives: int | None = Field(None, ge=1, description="score at most this many negatives per query (the "
                                      "best-ranked by BM25; GPL scores one): a large teacher on CPUs is slow")
    num_actors: int = Field(1, ge=1, description="scoring actors (each loads every teacher ranker once)")
    rows_per_call: int = Field(256, ge=1, description="pairs handed to one actor call")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each actor reserves (0 on CPU)")
    partitions: int = Field(4, ge=1, description="hash partitions of the grouping by query")
    rerank_test: bool = Field(False, description="also rerank the test run with the teacher (a single ranker) "
                              "and report it as the 'teacher' system (slow for a large teacher)")
    consistency_k: int | None = Field(None, ge=1, description="keep a query only if the teacher ranks its source "
                                      "document within the top k of the documents it scored for it (the positive "
                                      "and its negatives; a tie counts against the positive; a query with several "
                                      "positives is judged per positive): InPars-light's consistency check (arXiv "
                                      "2301.02998) on the teacher's own scores, at no extra scoring. The dropped "
                                      "triples go to dropped/ with the rank. None: every query is kept")

    def __post_init__(self) -> None:
        if self.weights is not None and len(self.weights) != len(self.rankers):
            raise ConfigError(f"teacher.weights has {len(self.weights)} values for {len(self.rankers)} rankers")
        if self.weights is not None and (min(self.weights) < 0 or sum(self.weights) <= 0):
            raise ConfigError(f"teacher.weights must be >= 0 with a positive sum, got {self.weights}")
        if self.rerank_test and len(self.rankers) != 1:
            raise ConfigError("teacher.rerank_test reranks with one ranker: give exactly one teacher ranker")


# --- pure functions -------------------------------------------------------------------------------------
def _list_codes(triples: pa.Table) -> np.ndarray:
    """An integer per row naming its (query, positive) list, in first-seen order."""
    keys = pc.binary_join_element_wise(triples.column(S.QUERY_ID), triples.column(S.POS_DOC_ID), "\t")
    return keys.combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)


def _cap_negatives(triples: pa.Table, max_negatives: int | None) -> pa.Table:
    """At most ``max_negatives`` triples per (query, positive): the negatives BM25 ranked highest."""
    if max_negatives is None or triples.num_rows == 0:
        return triples
    rows = triples.sort_by([(S.QUERY_ID, "ascending"), (S.POS_DOC_ID, "ascending"), (S.NEG_RANK, "ascending"),
                            (S.NEG_DOC_ID, "ascending")])
    codes = _list_codes(rows)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    within = np.arange(len(codes)) - np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    return rows.filter(pa.array(within < max_negatives))


def distinct_pairs(triples: pa.Table) -> pa.Table:
    """The distinct (query, document) pairs of the triples of one query partition, in (query, doc) order:
    columns query_id, query, doc_id, text."""
    pos = triples.select([S.QUERY_ID, S.QUERY, S.POS_DOC_ID, S.POS_TEXT]).rename_columns(
        [S.QUERY_ID, S.QUERY, S.DOC_ID, S.TEXT])
    neg = triples.select([S.QUERY_ID, S.QUERY, S.NEG_DOC_ID, S.NEG_TEXT]).rename_columns(
        [S.QUERY_ID, S.QUERY, S.DOC_ID, S.TEXT])
    both = pa.concat_tables([pos, neg])
    if both.num_rows == 0:
        return both
    keys = pc.binary_join_element_wise(both.column(S.QUERY_ID), both.column(S.DOC_ID), "\t")
    _, first = np.unique(keys.to_numpy(zero_copy_only=False).astype(object), return_index=True)
    return both.take(pa.array(np.sort(first))).sort_by([(S.QUERY_ID, "ascending"), (S.DOC_ID, "ascending")])


def attach_scores(triples: pa.Table, scored: pa.Table) -> pa.Table:
    """The triples of one query partition with the teacher's ``pos_score`` and ``neg_score``.

    ``scored`` holds query_id, doc_id and the fused ``score`` of every pair :func:`distinct_pairs` gave; a
    triple whose pair has no score (its text was empty and so never scored) raises: no row is lost silently.
    """
    triples = triples.select(S.TRIPLES.names)
    keys = pc.binary_join_element_wise(scored.column(S.QUERY_ID), scored.column(S.DOC_ID), "\t")
    score_of = dict(zip(keys.to_pylist(), scored.column(S.SCORE).to_pylist()))

    def lookup(doc_col: str) -> pa.Array:
        k = pc.binary_join_element_wise(triples.column(S.QUERY_ID), triples.column(doc_col), "\t").to_pylist()
        missing = [x for x in k if x not in score_of]
        if missing:
            raise InparsError(f"teacher: {len(missing)} pairs were not scored, e.g. {missing[0]!r}")
        return pa.array([score_of[x] for x in k], pa.float64())

    return triples.append_column(POS_SCORE, lookup(S.POS_DOC_ID)).append_column(
        NEG_SCORE, lookup(S.NEG_DOC_ID)).cast(SCORED_TRIPLES)


def positive_ranks(scored: pa.Table) -> np.ndarray:
    """For each scored triple, the teacher's rank of its positive among that (query, positive)'s documents:
    1 + the number of its negatives scored at or above it (a tie counts against the positive). The rows of
    one (query, positive) must all be in ``scored`` (one query partition holds them)."""
    if scored.num_rows == 0:
        return np.zeros(0, np.int64)
    codes = _list_codes(scored)
    above = (scored.column(NEG_SCORE).to_numpy() >= scored.column(POS_SCORE).to_numpy()).astype(np.int64)
    return 1 + np.bincount(codes, weights=above).astype(np.int64)[codes]


def attach_ranked(triples: pa.Table, scored: pa.Table) -> pa.Table:
    """:func:`attach_scores`, plus the ``pos_rank`` column (:func:`positive_ranks`)."""
    out = attach_scores(triples, scored)
    return out.append_column(POS_RANK, pa.array(positive_ranks(out), pa.int64()))


def fuse(scores: list[np.ndarray], stats: list[tuple[float, float]], weights: list[float]) -> np.ndarray:
    """The weighted sum of each ranker's standardised scores (one ranker: its raw scores, unchanged)."""
    if len(scores) == 1:
        return scores[0]
    total = sum(weights)
    parts = [w / total * (s - mean) / (std if std > 0 else 1.0) for s, (mean, std), w in zip(scores, stats, weights)]
    return np.sum(parts, axis=0)


# --- Ray wiring ------------------------------------------------------------------------------------------
def _score_column(i: int) -> str:
    return f"teacher_{i}"


def _unranked(batch: pa.Table) -> pa.Table:
    return batch.drop_columns([POS_RANK]).cast(SCORED_TRIPLES)


def _fused(batch: pa.Table, stats: list[tuple[float, float]], weights: list[float]) -> pa.Table:
    cols = [batch.column(_score_column(i)).to_numpy(zero_copy_only=False) for i in range(len(weights))]
    return pa.table({S.QUERY_ID: batch.column(S.QUERY_ID), S.DOC_ID: batch.column(S.DOC_ID),
                     S.SCORE: pa.array(fuse(cols, stats, weights), pa.float64())})


def run_teacher(triples_dir: storage.PathLike, out_dir: storage.PathLike, config: TeacherConfig,
                index_dir: storage.PathLike | None = None, bm25: BM25Config | None = None) -> StageResult:
    """Score the mine stage's triples (``triples_dir``: its folder or ``triples/``) with the teacher and write
    ``triples/`` (:data:`SCORED_TRIPLES`) and, last, the manifest to ``out_dir`` (local or ``gs://``).

    Keyed by content: the triples' manifest and each teacher model's (a retrained teacher scores again), and
    with ``bm25_weight`` the index's manifest (``index_dir``) and the BM25 settings (``bm25``). A rerun with
    the same inputs does nothing; a killed run leaves no manifest and is redone.
    """
    from inpars_ray.io.manifest import input_key

    out = storage.location(out_dir)
    storage.check_reachable(out, triples_dir)
    files, triples_key = published(triples_dir, "mine", TRIPLES_DIR)
    keyed = to_jsonable(config)
    if config.consistency_k is None:
        keyed.pop("consistency_k")  # added later: runs without it keep their keys
    stage_config: dict = {"triples": triples_key, "models": [artifact_key(r.model) for r in config.rankers],
                          "teacher": keyed}
    if config.bm25_weight > 0:
        if index_dir is None:
            raise ConfigError("teacher.bm25_weight fuses BM25's scores: the teacher stage needs the run's index")
        bm25 = bm25 or BM25Config()
        stage_config.update(index=input_key(index_dir, stage="index"), bm25=bm25)
    outputs = (TRIPLES_DIR,) if config.consistency_k is None else (TRIPLES_DIR, DROPPED_DIR)
    return run_once(StageSpec(STAGE, out, stage_config, outputs=outputs, stale=(DROPPED_DIR,)),
                    lambda record: _label(record, files, triples_dir, out, config, index_dir, bm25))


def _label(record: StageRecord, files: list[storage.Location], triples_dir: storage.PathLike,
           out: storage.Location, config: TeacherConfig, index_dir: storage.PathLike | None,
           bm25: BM25Config | None) -> dict[str, int]:
    """The teacher's scoring and fusion, written to ``out/triples``; returns the files the manifest lists."""
    from inpars_ray.models.rankers import score_dataset
    from inpars_ray.runtime.exchange import hash_exchange
    from inpars_ray.runtime.raykit import ensure_ray

    if not files:
        raise InparsError(f"teacher: no triples (Parquet files) in {storage.location(triples_dir)}")
    ensure_ray()
    rankers = [r.resolved() for r in config.rankers]
    weights = list(config.weights or [1.0] * len(rankers))
    triples = artifacts.read_parquet_dataset(files)
    S.require_columns(triples.schema().names, S.TRIPLES.names, f"teacher ({triples_dir})")
    n_in = triples.count()
    with record.timed("score"):
        if config.max_negatives is not None:  # the scored candidates sized before any scoring
            triples = hash_exchange([triples], [S.QUERY_ID], config.partitions, _cap_negatives,
                                    max_negatives=config.max_negatives).materialize()
        n_expected = triples.count()
        pairs = hash_exchange([triples], [S.QUERY_ID], config.partitions, distinct_pairs).materialize()
        empty = pairs.filter(lambda r: not r[S.TEXT] or not r[S.QUERY]).count()
        if empty:
            raise InparsError(f"teacher: {empty} pairs have an empty query or document text (mine writes none)")
        scored = pairs
        for i, ranker in enumerate(rankers):
            scored = score_dataset(scored, ranker, num_actors=config.num_actors, batch_rows=config.rows_per_call,
                                   num_gpus_per_actor=config.num_gpus_per_actor, score_column=_score_column(i))
        if config.bm25_weight > 0:  # one more score column, fused as a ranker of its own
            import ray

            from inpars_ray.stages.retrieve import BM25PairScorer

            assert index_dir is not None  # run_teacher checked it
            scored = scored.map_batches(
                BM25PairScorer, fn_constructor_args=(storage.location(index_dir), bm25, _score_column(len(rankers))),
                batch_size=config.rows_per_call, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1),
                num_cpus=1)
            weights = [w / sum(weights) for w in weights] + [config.bm25_weight]
        scored = scored.drop_columns([S.QUERY, S.TEXT]).materialize()
        stats = []
        for i in range(len(weights)):
            col = _score_column(i)
            stats.append((float(scored.mean(col)), float(scored.std(col, ddof=0))) if len(weights) > 1 else (0.0, 1.0))
        fused = scored.map_batches(_fused, fn_kwargs={"stats": stats, "weights": weights}, batch_format="pyarrow")
        k = config.consistency_k
        labelled = hash_exchange([triples, fused], [S.QUERY_ID, S.QUERY_ID], config.partitions,
                                 attach_scores if k is None else attach_ranked)
        if k is not None:  # the consistency check: kept triples without their rank, the rest to dropped/
            labelled = labelled.materialize()
            labelled.filter(expr=f"{POS_RANK} > {k}").write_parquet(
                (out / DROPPED_DIR).path, filesystem=out.fs, **artifacts.PARQUET_WRITE)
            labelled = labelled.filter(expr=f"{POS_RANK} <= {k}").map_batches(_unranked, batch_format="pyarrow")
        labelled.write_parquet((out / TRIPLES_DIR).path, filesystem=out.fs, **artifacts.PARQUET_WRITE)
    written = artifacts.snapshot(out, TRIPLES_DIR)
    kept_margins = _read_margins([out.join(n) for n in written])
    n_out, n_dropped, dropped_lists = len(kept_margins), 0, 0
    dropped_margins = np.zeros(0)
    if config.consistency_k is not None:
        dropped = artifacts.snapshot(out, DROPPED_DIR)
        lists = [artifacts.read_parquet(out.join(n), columns=[S.QUERY_ID, S.POS_DOC_ID, POS_SCORE, NEG_SCORE])
                 for n in dropped]
        dropped_margins = np.concatenate([_margins_of(t) for t in lists]) if lists else dropped_margins
        n_dropped = len(dropped_margins)
        dropped_lists = len({key for t in lists for key in zip(t.column(S.QUERY_ID).to_pylist(),
                                                               t.column(S.POS_DOC_ID).to_pylist())})
        written = {**written, **dropped}
    if n_out + n_dropped != n_expected:
        raise InparsError(f"teacher: wrote {n_out} scored triples and dropped {n_dropped} where {n_expected} "
                          "were expected")
    if n_out == 0 and n_dropped:
        raise InparsError(f"teacher: consistency_k={config.consistency_k} dropped every one of the {n_dropped} "
                          f"triples (in {out.join(DROPPED_DIR).uri}): the teacher ranked no source document "
                          "that high; raise consistency_k or unset it")
    margins = _margin_stats(np.concatenate([kept_margins, dropped_margins]))  # every scored triple
    record.counts.update(triples_in=n_in, triples=n_out, capped=n_in - n_expected, pairs_scored=scored.count())
    if config.consistency_k is not None:
        record.counts.update(dropped_inconsistent_triples=n_dropped, dropped_inconsistent_lists=dropped_lists)
    record.extra.update(rankers=[dataclasses.asdict(r) for r in rankers], weights=weights, fusion=config.fusion,
                        stats=[{"mean": m, "std": s} for m, s in stats], **margins)
    logger.info("[teacher] %d triples scored (%d pairs); positive above negative for %.1f%%", n_out + n_dropped,
                record.counts["pairs_scored"], 100 * margins["pos_above_neg"])
    if config.consistency_k is not None:
        logger.info("[teacher] consistency (top %d): %d (query, positive) lists dropped (%d triples), %d triples "
                    "kept", config.consistency_k, dropped_lists, n_dropped, n_out)
    return written


def _margins_of(scored: pa.Table) -> np.ndarray:
    return scored.column(POS_SCORE).to_numpy() - scored.column(NEG_SCORE).to_numpy()


def _read_margins(files: list[storage.Location]) -> np.ndarray:
    """The teacher's margin (positive - negative) of every triple in ``files``, reading only the scores."""
    margins = [_margins_of(artifacts.read_parquet(f, columns=[POS_SCORE, NEG_SCORE])) for f in files]
    return np.concatenate(margins) if margins else np.zeros(0)


def _margin_stats(margins: np.ndarray) -> dict[str, float]:
    """How the teacher sees the triples: the share where it scores the positive above the negative, and
    the mean and spread of its margins (a teacher that agrees with BM25's labels everywhere adds little)."""
    if margins.size == 0:
        return {"pos_above_neg": 0.0, "margin_mean": 0.0, "margin_std": 0.0}
    return {"pos_above_neg": float(np.mean(margins > 0)), "margin_mean": float(margins.mean()),
            "margin_std": float(margins.std())}
