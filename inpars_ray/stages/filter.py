"""Stage — filter: keep the synthetic queries most likely to be good training data.

Two strategies (InPars-v1, arXiv 2202.05144; InPars-v2, arXiv 2301.01820):

* ``scores`` (InPars-v1): the generator's own confidence, the mean of the generated tokens' log-probs
  (``sum`` and ``min`` are offered too); queries with fewer than ``min_tokens`` or more than
  ``max_tokens`` tokens are dropped; the top ``keep_top_k`` survive.
* ``reranker`` (InPars-v2): a ranker's score of (query, its source document): monoT5's P(true) as in
  InPars-v2, or a cross-/bi-encoder's score, computed by the shared :class:`inpars_ray.models.rankers.RankerUDF`;
  the top ``keep_top_k`` survive.

Whatever the strategy, rows the generator failed on, empty queries, queries whose document is not in the
corpus, queries copied verbatim from their document, queries that repeat one of their prompt's few-shot
example queries (small generators copy them word for word), with ``drop_unfinished`` queries whose generation
ran out of new tokens before its line ended, and duplicate queries are dropped first. Every input
row ends up either in ``kept/`` or in ``dropped/`` with its reason, and the manifest counts both.

Layers: pure functions over Arrow batches (:func:`classify`, :func:`mark_duplicates`,
:func:`local_top_k`, :func:`threshold_of`, :func:`apply_threshold`); the ranker actor comes from
:mod:`inpars_ray.models.rankers`; :func:`run_filter` wires them into Ray Data. The document text is joined to the
queries by :func:`inpars_ray.stages.ranker_input.join_documents` (the document store, or a hash-partitioned join
on Ray tasks), so the corpus never sits in one process, and the top-k is distributed: each block keeps its own
top-k, the driver merges those small candidate sets into a threshold, and a second pass over the blocks splits
kept from dropped.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError, InparsError
from inpars_ray.io import artifacts, storage
from inpars_ray.io.catalog import Collection
from inpars_ray.io.load import LoadConfig
from inpars_ray.io.manifest import StageRecord, collection_key, published, upstream_manifest
from inpars_ray.io.stage import StageResult, StageSpec, run_once
from inpars_ray.io.text import copies_document, document_text, normalise
from inpars_ray.models.prompts import base_prompt_name
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.runtime.exchange import hash_exchange, left_join_unique
from inpars_ray.schema import DROPPED_DIR, KEPT_DIR
from inpars_ray.stageconfig import Field, stage_config
from inpars_ray.stages.ranker_input import join_documents

logger = logging.getLogger(__name__)

STRATEGIES = ("scores", "reranker", "consistency")
#: strategies whose score is the generator's log-probs (consistency cuts later, in its own stage)
LOGPROB_STRATEGIES = ("scores", "consistency")
AGGREGATES = ("mean", "sum", "min")
# drop reasons, in the order the checks apply (the first that applies is recorded)
GENERATION_ERROR = "generation_error"
EMPTY_QUERY = "empty_query"
UNKNOWN_DOCUMENT = "unknown_document"
COPIED = "copied_from_document"
FEWSHOT_REPEAT = "repeats_fewshot_example"
TOKEN_LENGTH = "token_length"
UNFINISHED = "unfinished_generation"
NO_SCORE = "no_score"
DUPLICATE = "duplicate_query"
BELOW_TOP_K = "below_top_k"
REASONS = (GENERATION_ERROR, EMPTY_QUERY, UNKNOWN_DOCUMENT, COPIED, FEWSHOT_REPEAT, TOKEN_LENGTH, UNFINISHED, NO_SCORE,
           DUPLICATE, BELOW_TOP_K)
# helper columns that live only inside the stage
_QNORM, _DOC = "_query_norm", "_document"
_ORDER = [(S.FILTER_SCORE, "descending"), (S.QUERY_ID, "ascending"), (S.DOC_ID, "ascending")]


@stage_config
class FilterConfig:
    """How synthetic queries are filtered (defaults: InPars, arXiv 2202.05144 and 2301.01820)."""

    strategy: str = Field("scores", description="scores (InPars-v1, generator log-probs), reranker "
                          "(InPars-v2: a ranker's score of the query and its document, monoT5 P(true) in the "
                          "paper) or consistency (InPars-light: after the scores filter, keep a query only if "
                          "a ranker puts its document in the top consistency_k of its BM25 hits; the pipeline "
                          "runs it as its own stage)")
    keep_top_k: int = Field(10_000, ge=1, description="how many queries survive (InPars: 10,000); ties broken "
                            "by query id, then doc id")
    aggregate: str = Field("mean", description="for scores, how token log-probs become one score: mean "
                           "(InPars), sum or min")
    min_tokens: int = Field(3, ge=0, description="queries with fewer generated tokens are dropped (InPars: 3)")
    max_tokens: int = Field(1000, ge=0, description="queries with more generated tokens are dropped (InPars: 1000)")
    drop_unfinished: bool = Field(False, description="drop a query whose generation used all of the generator's "
                                  "max_new_tokens without ending its line: a run-on text cut off, not a query. The "
                                  "limit is read from the generate stage's manifest; rows without one (imported "
                                  "data) are not checked, with a warning")
    ranker: RankerConfig | None = Field(None, description="for reranker, the ranker and how it is fed (model, "
                                        "family, max_length, batch_size, device...); for consistency, the same or "
                                        "None: a ranker trained on all candidates (InPars-light)")
    consistency_k: int = Field(3, ge=1, description="for consistency, the rank within which the source document "
                               "must be (InPars-light: 3)")
    consistency_depth: int = Field(100, ge=1, description="for consistency, BM25 hits per candidate query that "
                                   "the ranker reorders")
    num_actors: int = Field(1, ge=1, description="for reranker, ranker actors scoring in parallel")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="for reranker, GPUs each actor reserves (0 on CPU)")
    rows_per_call: int = Field(256, ge=1, description="for reranker, rows handed to an actor per call")
    shuffle_partitions: int = Field(8, ge=1, description="partitions of the hash join with the corpus and of "
                                    "the duplicate check")

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"filter strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"filter aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ConfigError(f"need 0 <= min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")
        if self.strategy == "reranker" and self.ranker is None:
            raise ConfigError("the reranker strategy needs a ranker (ranker.model; --model on the command line)")
        if self.consistency_k > self.consistency_depth:
            raise ConfigError(f"consistency_k={self.consistency_k} is deeper than consistency_depth="
                              f"{self.consistency_depth}")


# --- pure functions over batches ------------------------------------------------------------------------
def aggregate_logprobs(logprobs: list[float] | None, mean_logprob: float | None, how: str) -> float:
    """One score from a query's token log-probs; NaN when there is nothing to score."""
    if logprobs:
        values = np.asarray(logprobs, dtype=np.float64)
        score = float(values.mean() if how == "mean" else values.sum() if how == "sum" else values.min())
    elif how == "mean" and mean_logprob is not None:
        score = float(mean_logprob)
    else:
        return float("nan")
    return score if np.isfinite(score) else float("nan")


def token_count(num_tokens: int | None, logprobs: list[float] | None, query: str) -> int:
    """Generated tokens of a query: the recorded count, else its log-probs, else its whitespace words."""
    if num_tokens is not None:
        return int(num_tokens)
    if logprobs is not None:
        return len(logprobs)
    return len(query.split())


@dataclasses.dataclass(frozen=True)
class FewShotQueries:
    """The normalised example queries a generated row's prompt showed the generator.

    Attributes:
        by_prompt: prompt name -> example queries every prompt of that name holds (the built-in
            ``inpars``/``inpars-gbq`` examples, good and bad questions alike).
        by_id: collection query id -> its normalised text, for the examples a row names in ``fewshot_ids``
            (promptagator draws them from the collection).
    """

    by_prompt: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    by_id: dict[str, str] = dataclasses.field(default_factory=dict)

    def of(self, prompt_name: str | None, fewshot_ids: list[str] | None) -> set[str] | frozenset[str]:
        shown = self.by_prompt.get(base_prompt_name(prompt_name or ""), frozenset())
        if fewshot_ids:
            return shown | {self.by_id[i] for i in fewshot_ids if i in self.by_id}
        return shown


def builtin_fewshot_queries() -> dict[str, frozenset[str]]:
    """Normalised example queries of the built-in InPars prompts, by prompt name."""
    from inpars_ray.models.prompts import inpars_template

    out = {}
    for gbq in (False, True):
        template = inpars_template(gbq)
        out[template.name] = frozenset(normalise(text) for ex in template.examples for _, text in ex.lines)
    return out


def classify(batch: pa.Table, config: FilterConfig, fewshot: FewShotQueries | None = None,
             token_limit: int | None = None) -> pa.Table:
    """Per-row checks of generated rows joined with their document (``title``/``text``, null if unknown).

    Adds ``reason`` (null for rows that pass), the normalised query (the duplicate key) and, for the
    "scores" strategy, ``filter_score``; for "reranker" it adds the document text the ranker reads. The
    document's ``title``/``text`` columns are removed. ``fewshot`` (default: the built-in prompts'
    examples) says which example queries each row's prompt showed. ``token_limit`` is the generator's
    ``max_new_tokens``: a query of that many tokens never ended its line (dropped as unfinished; None: no check).
    """
    fewshot = fewshot if fewshot is not None else FewShotQueries(builtin_fewshot_queries())
    S.require_columns(batch.column_names, [S.QUERY_ID, S.DOC_ID, S.QUERY, S.ERROR, S.TITLE, S.TEXT], "filter")
    cols = {c: batch.column(c).to_pylist() for c in
            (S.QUERY, S.ERROR, S.TITLE, S.TEXT, S.NUM_TOKENS, S.TOKEN_LOGPROBS, S.MEAN_LOGPROB, S.PROMPT_NAME,
             S.FEWSHOT_IDS)
            if c in batch.column_names}
    n = batch.num_rows
    none = [None] * n
    reasons: list[str | None] = []
    norms, docs, scores = [], [], []
    for i in range(n):
        query, title, text = cols[S.QUERY][i], cols[S.TITLE][i], cols[S.TEXT][i]
        logprobs = cols.get(S.TOKEN_LOGPROBS, none)[i]
        doc = document_text(title, text) if text is not None or title is not None else None
        qnorm = normalise(query) if query else ""
        score = (aggregate_logprobs(logprobs, cols.get(S.MEAN_LOGPROB, none)[i], config.aggregate)
                 if config.strategy in LOGPROB_STRATEGIES else float("nan"))
        if cols[S.ERROR][i] is not None:
            reason = GENERATION_ERROR
        elif not qnorm:
            reason = EMPTY_QUERY
        elif doc is None:
            reason = UNKNOWN_DOCUMENT
        elif copies_document(query, doc):  # the query is a verbatim span of its document
            reason = COPIED
        elif qnorm in fewshot.of(cols.get(S.PROMPT_NAME, none)[i], cols.get(S.FEWSHOT_IDS, none)[i]):
            reason = FEWSHOT_REPEAT
        elif not config.min_tokens <= (tokens := token_count(cols.get(S.NUM_TOKENS, none)[i], logprobs,
                                                              query)) <= config.max_tokens:
            reason = TOKEN_LENGTH
        elif token_limit is not None and tokens >= token_limit:
            reason = UNFINISHED
        elif config.strategy in LOGPROB_STRATEGIES and np.isnan(score):
            reason = NO_SCORE
        else:
            reason = None
        reasons.append(reason)
        norms.append(qnorm)
        docs.append(doc)
        scores.append(score)
    out = batch.drop_columns([S.TITLE, S.TEXT])
    out = out.append_column(S.DROP_REASON, pa.array(reasons, pa.string()))
    out = out.append_column(_QNORM, pa.array(norms, pa.string()))
    if config.strategy == "reranker":
        return out.append_column(_DOC, pa.array(docs, pa.string()))
    return out.append_column(S.FILTER_SCORE, pa.array(scores, pa.float64()))


def mark_duplicates(batch: pa.Table) -> pa.Table:
    """Mark every row but one of each normalised query as a duplicate; the one kept has the smallest
    (query id, doc id), so the choice does not depend on block order."""
    if batch.num_rows == 0:
        return batch
    order = pc.sort_indices(batch, [(_QNORM, "ascending"), (S.QUERY_ID, "ascending"), (S.DOC_ID, "ascending")])
    batch = batch.take(order)
    norms = batch.column(_QNORM).to_numpy(zero_copy_only=False)
    repeat = np.zeros(batch.num_rows, dtype=bool)
    repeat[1:] = norms[1:] == norms[:-1]
    reasons = pc.if_else(pa.array(repeat), pa.scalar(DUPLICATE, pa.string()), batch.column(S.DROP_REASON))
    return batch.set_column(batch.schema.get_field_index(S.DROP_REASON), S.DROP_REASON, reasons)


def rows_with(batch: pa.Table, dropped: bool) -> pa.Table:
    """The rows that were dropped (``dropped=True``) or that are still in (``dropped=False``)."""
    valid = pc.is_valid(batch.column(S.DROP_REASON))
    return batch.filter(valid if dropped else pc.invert(valid))


def local_top_k(batch: pa.Table, k: int) -> pa.Table:
    """The sort keys of the best ``k`` rows of a block (higher score first; ties by query id, doc id)."""
    keys = batch.select([S.FILTER_SCORE, S.QUERY_ID, S.DOC_ID])
    return keys.take(pc.sort_indices(keys, _ORDER)[:k])


def threshold_of(candidates: pa.Table, k: int) -> tuple[float, str, str] | None:
    """The sort key of the k-th best candidate, or None when there are fewer than ``k`` (all are kept)."""
    if candidates.num_rows < k:
        return None
    row = candidates.take(pc.sort_indices(candidates, _ORDER)[k - 1 : k]).to_pylist()[0]
    return row[S.FILTER_SCORE], row[S.QUERY_ID], row[S.DOC_ID]


def apply_threshold(batch: pa.Table, threshold: tuple[float, str, str] | None) -> pa.Table:
    """Set ``reason`` to below_top_k on every row whose sort key comes after ``threshold``."""
    if threshold is None or batch.num_rows == 0:
        return batch
    score, qid, did = threshold
    s, q, d = (batch.column(c) for c in (S.FILTER_SCORE, S.QUERY_ID, S.DOC_ID))
    tie = pc.and_(pc.equal(s, score), pc.or_(pc.less(q, qid), pc.and_(pc.equal(q, qid), pc.less_equal(d, did))))
    kept = pc.or_(pc.greater(s, score), tie)
    reasons = pc.if_else(kept, batch.column(S.DROP_REASON), pa.scalar(BELOW_TOP_K, pa.string()))
    return batch.set_column(batch.schema.get_field_index(S.DROP_REASON), S.DROP_REASON, reasons)


def kept_table(batch: pa.Table) -> pa.Table:
    """Rows that survived, as :data:`schema.FILTERED`."""
    return rows_with(batch, dropped=False).select(S.FILTERED.names).cast(S.FILTERED)


def dropped_table(batch: pa.Table) -> pa.Table:
    """Rows that were dropped, as :data:`schema.FILTER_DROPPED`."""
    rows = rows_with(batch, dropped=True)
    if S.FILTER_SCORE not in rows.column_names:
        rows = rows.append_column(S.FILTER_SCORE, pa.nulls(rows.num_rows, pa.float64()))
    return rows.select(S.FILTER_DROPPED.names).cast(S.FILTER_DROPPED)


# --- Ray wiring -------------------------------------------------------------------------------------------
def _with_document(rows: pa.Table, documents: pa.Table) -> pa.Table:
    return left_join_unique(rows, documents, S.DOC_ID)


def _distinct_fewshot_ids(batch: pa.Table) -> pa.Table:
    ids = pc.unique(pc.list_flatten(batch.column(S.FEWSHOT_IDS)).drop_null())
    return pa.table({"id": ids.cast(pa.string())})


def fewshot_queries(generated: Any, collection: Collection, load_config: LoadConfig = LoadConfig()) -> FewShotQueries:
    """The example queries of the prompts behind ``generated``: the built-in prompts' and, for ids the
    rows name in ``fewshot_ids`` (a handful per run), the collection's query texts."""
    from inpars_ray.io.load import read_queries

    ids = set()
    for part in generated.select_columns([S.FEWSHOT_IDS]).map_batches(
            _distinct_fewshot_ids, batch_format="pyarrow").iter_batches(batch_format="pyarrow", batch_size=None):
        ids.update(part.column("id").to_pylist())
    by_id: dict[str, str] = {}
    if ids:
        queries, _ = read_queries(collection, load_config)
        keep = queries.filter(pc.is_in(queries.column(S.QUERY_ID), value_set=pa.array(sorted(ids), pa.string())))
        by_id = {q: normalise(t) for q, t in zip(keep.column(S.QUERY_ID).to_pylist(), keep.column(S.QUERY).to_pylist())}
        if len(by_id) < len(ids):
            logger.warning("%d few-shot query ids are not in the collection's queries; their repeats are not "
                           "detected", len(ids) - len(by_id))
    return FewShotQueries(builtin_fewshot_queries(), by_id)


def _read_back(folder: storage.Location, column: str) -> pa.ChunkedArray:
    """``column`` of the Parquet files this stage wrote under ``folder`` (empty when it wrote none), read with
    their page checksums verified: a damaged file is an :class:`ArtifactDamagedError` naming it."""
    files = [folder.join(name) for name in folder.files(suffix=".parquet")]
    if not files:
        return pa.chunked_array([], pa.string())
    return artifacts.read_parquet_table(files, columns=[column]).column(0)


def _count_rows(kept_dir: storage.Location) -> int:
    return len(_read_back(kept_dir, S.QUERY_ID))


def _count_reasons(dropped_dir: storage.Location) -> dict[str, int]:
    reasons = _read_back(dropped_dir, S.DROP_REASON)
    return {str(v["values"]): int(v["counts"]) for v in pc.value_counts(reasons).to_pylist()}


def generation_limit(queries_dir: storage.PathLike) -> int | None:
    """The ``max_new_tokens`` the generate run behind ``queries_dir`` (its folder or its ``parts/``) decoded
    with, from its manifest; None when no generate manifest is there (a user's own Parquet files)."""
    from inpars_ray.stages import generate, generate_parts

    found = upstream_manifest(queries_dir, generate.STAGE, generate.PARTS)
    return generate_parts.max_new_tokens(found[1]) if found is not None else None


def run_filter(queries_dir: storage.PathLike, collection: Collection, out_dir: storage.PathLike,
               config: FilterConfig = FilterConfig(), load_config: LoadConfig = LoadConfig()) -> StageResult:
    """Filter the generated queries into ``out_dir`` (a local folder or ``gs://...``).

    ``queries_dir`` is a generate output (its folder or its ``parts/``: the part files its manifest lists
    are read) or any folder of Parquet files (:data:`schema.GENERATED`). Writes ``kept/``
    (:data:`schema.FILTERED`), ``dropped/`` (:data:`schema.FILTER_DROPPED`) and, last, the manifest listing
    them. A rerun with the same inputs (by content) and config does nothing.
    """
    out = storage.location(out_dir)
    storage.check_reachable(out, queries_dir)
    files, queries_key = published(queries_dir, "generate", "parts")
    spec = StageSpec("filter", out, {"queries": queries_key, "dataset": collection_key(collection),
                                     "filter": config, "load": load_config}, outputs=(KEPT_DIR, DROPPED_DIR))

    def body(record: StageRecord) -> None:
        if not files:
            raise InparsError(f"filter: no generated queries (Parquet files) in {storage.location(queries_dir)}")
        limit = generation_limit(queries_dir) if config.drop_unfinished else None
        if config.drop_unfinished and limit is None:
            logger.warning("filter: %s has no generate manifest naming max_new_tokens; unfinished generations "
                           "are not detected", storage.location(queries_dir).uri)
        filter_dataset(artifacts.read_parquet_dataset(files), collection, out, config, load_config, record,
                       token_limit=limit)

    return run_once(spec, body)


def filter_dataset(generated: Any, collection: Collection, out_dir: storage.PathLike, config: FilterConfig,
                   load_config: LoadConfig = LoadConfig(), record: StageRecord | None = None,
                   token_limit: int | None = None) -> dict[str, int]:
    """The filter over a Ray Dataset of generated rows: writes ``kept/`` and ``dropped/`` under ``out_dir``
    and returns the counts (``run_filter`` adds the manifest and the resume check). ``token_limit``: the
    generator's ``max_new_tokens``, for ``drop_unfinished`` (None: no check)."""
    out = storage.location(out_dir)
    # Ray Data writes from the worker nodes, through the run root's filesystem (local or gs://)
    dropped_at = {"path": (out / DROPPED_DIR).path, "filesystem": out.fs, **artifacts.PARQUET_WRITE}
    kept_at = {"path": (out / KEPT_DIR).path, "filesystem": out.fs, **artifacts.PARQUET_WRITE}
    record = record or StageRecord("filter", config)
    parts = config.shuffle_partitions
    S.require_columns(generated.schema().names, S.GENERATED.names, "filter (generated queries)")
    with record.timed("checks"):
        # read once: the few-shot check and the checks below both pass over these rows, and reading the
        # Parquet parts was most of this stage's time (measured by benchmarks/filter_throughput.py)
        generated = generated.materialize()
        # the title and text of each generated row's document (null when the corpus lacks it)
        joined = join_documents(generated, collection, load_config, _with_document, partitions=parts)
        fewshot = fewshot_queries(generated, collection, load_config)
        checked = joined.map_batches(classify, fn_kwargs={"config": config, "fewshot": fewshot,
                                                          "token_limit": token_limit},
                                     batch_format="pyarrow").materialize()
        n_in = record.counts["input_rows"] = checked.count()  # one row per input row (a left join)
        checked.map_batches(dropped_table, batch_format="pyarrow").write_parquet(**dropped_at)
        # duplicates: every copy of a normalised query lands in the same partition
        survivors = checked.map_batches(rows_with, fn_kwargs={"dropped": False}, batch_format="pyarrow")
        deduped = hash_exchange([survivors], [_QNORM], parts, mark_duplicates).materialize()
        deduped.map_batches(dropped_table, batch_format="pyarrow").write_parquet(**dropped_at)
        survivors = deduped.map_batches(rows_with, fn_kwargs={"dropped": False}, batch_format="pyarrow")
    with record.timed("score"):
        if config.strategy == "reranker":
            from inpars_ray.models.rankers import score_dataset

            assert config.ranker is not None  # FilterConfig requires it for the reranker strategy
            survivors = score_dataset(survivors, config.ranker, num_actors=config.num_actors,
                                      num_gpus_per_actor=config.num_gpus_per_actor,
                                      batch_rows=config.rows_per_call, query_column=S.QUERY,
                                      text_column=_DOC, score_column=S.FILTER_SCORE)
        scored = survivors.materialize()
    with record.timed("top_k"):
        # every block keeps only its own top-k keys; the driver merges those small candidate sets
        candidates = [b for b in scored.map_batches(local_top_k, fn_kwargs={"k": config.keep_top_k},
                                                    batch_format="pyarrow", batch_size=None)
                      .iter_batches(batch_format="pyarrow", batch_size=None)]
        threshold = threshold_of(pa.concat_tables(candidates) if candidates else
                                 pa.table({S.FILTER_SCORE: pa.array([], pa.float64())}), config.keep_top_k)
        final = scored.map_batches(apply_threshold, fn_kwargs={"threshold": threshold},
                                   batch_format="pyarrow").materialize()
        final.map_batches(dropped_table, batch_format="pyarrow").write_parquet(**dropped_at)
        final.map_batches(kept_table, batch_format="pyarrow").write_parquet(**kept_at)
    kept = _count_rows(out / KEPT_DIR)
    dropped = _count_reasons(out / DROPPED_DIR)
    record.counts.update(kept=kept, **{f"dropped_{r}": dropped.get(r, 0) for r in REASONS})
    if kept + sum(dropped.values()) != n_in:
        raise InparsError(f"filter accounted for {kept + sum(dropped.values())} of {n_in} input rows")
    record.extra["threshold"] = list(threshold) if threshold else None
    record.extra["unfinished_at_tokens"] = token_limit
    return record.counts
