"""Pure ranking of scored hits: the per-query blend with the first stage's score, and ranks by score.

The rerank stage (:mod:`inpars_ray.stages.rerank`), training's dev evaluation and the PyTerrier reranker
(:mod:`inpars_ray.integrations.pyterrier`) all rank through these functions, so a model ranks the same
hits in the same order wherever it runs. Pure functions over Arrow tables: no model, no Ray.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S

FIRST_STAGE_SCORE = "first_stage_score"  #: column of a scored hit: its first-stage score (for the blend)


def min_max_by_query(qids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` scaled to [0, 1] within each query (a query whose values are all equal gets 0)."""
    _, group = np.unique(qids, return_inverse=True)
    low = np.full(group.max() + 1, np.inf)
    high = np.full(group.max() + 1, -np.inf)
    np.minimum.at(low, group, values)
    np.maximum.at(high, group, values)
    span = (high - low)[group]
    return np.where(span > 0, (values - low[group]) / np.where(span > 0, span, 1.0), 0.0)


def blend_first_stage(scored: pa.Table, weight: float) -> pa.Table:
    """``scored`` with its score replaced by ``(1-weight) * ranker + weight * first stage``, both min-max
    scaled per query. Every hit of a query must be in ``scored`` (the scale is the query's own)."""
    if weight <= 0 or scored.num_rows == 0:
        return scored
    S.require_columns(scored.column_names, [S.QUERY_ID, S.SCORE, FIRST_STAGE_SCORE], "first-stage blend")
    qids = scored.column(S.QUERY_ID).to_numpy(zero_copy_only=False).astype(object)
    model = min_max_by_query(qids, scored.column(S.SCORE).to_numpy(zero_copy_only=False).astype(np.float64))
    first = min_max_by_query(qids, scored.column(FIRST_STAGE_SCORE).to_numpy(
        zero_copy_only=False).astype(np.float64))
    mixed = pa.array((1.0 - weight) * model + weight * first, pa.float64())
    return scored.set_column(scored.column_names.index(S.SCORE), S.SCORE, mixed)


def rank_by_score(scored: pa.Table, first_stage_weight: float = 0.0) -> pa.Table:
    """A :data:`schema.RUN` table ranked within each query by descending score, ties by doc id (the score
    first blended with the first stage's, :func:`blend_first_stage`, when ``first_stage_weight`` > 0)."""
    scored = blend_first_stage(scored, first_stage_weight)
    if scored.num_rows == 0:
        return S.RUN.empty_table()
    order = pc.sort_indices(scored, [(S.QUERY_ID, "ascending"), (S.SCORE, "descending"), (S.DOC_ID, "ascending")])
    rows = scored.take(order)
    return pa.table({S.QUERY_ID: rows.column(S.QUERY_ID), S.DOC_ID: rows.column(S.DOC_ID),
                     S.RANK: pa.array(ranks_within_runs(rows.column(S.QUERY_ID)), pa.int64()),
                     S.SCORE: rows.column(S.SCORE)}, schema=S.RUN)


def ranks_within_runs(keys: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """1, 2, 3... within each run of equal consecutive ``keys`` (rows sorted by key), restarting at each new key."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    codes = (keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys).dictionary_encode().indices
    codes = codes.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
    run_start = np.repeat(starts, np.diff(np.append(starts, n)))
    return np.arange(n, dtype=np.int64) - run_start + 1
