"""Pure pieces of the rerank stage: ranking by score, the first-stage blend, the BM25 tail (no Ray)."""
from __future__ import annotations

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.stages.rerank import FIRST_STAGE_SCORE, RerankConfig, blend_first_stage, rank_by_score, rank_with_tail


def _scored(rows):
    return pa.table({S.QUERY_ID: [r[0] for r in rows], S.DOC_ID: [r[1] for r in rows],
                     S.SCORE: pa.array([r[2] for r in rows], pa.float64()),
                     FIRST_STAGE_SCORE: pa.array([r[3] for r in rows], pa.float64())})


# query a: the ranker prefers d1 a little, BM25 prefers d2 a lot; query b: one hit only
ROWS = [("a", "d1", 0.52, 10.0), ("a", "d2", 0.50, 30.0), ("a", "d3", 0.10, 20.0), ("b", "d9", 7.0, 3.0)]


def _order(table, query="a"):
    return [d for q, d in zip(table.column(S.QUERY_ID).to_pylist(), table.column(S.DOC_ID).to_pylist()) if q == query]


def test_weight_zero_is_the_ranker_alone_and_one_is_the_first_stage():
    assert _order(rank_by_score(_scored(ROWS))) == ["d1", "d2", "d3"]
    assert _order(rank_by_score(_scored(ROWS), first_stage_weight=1.0)) == ["d2", "d3", "d1"]
    assert blend_first_stage(_scored(ROWS), 0.0).equals(_scored(ROWS))


def test_blend_scales_each_query_to_unit_range_before_mixing():
    mixed = blend_first_stage(_scored(ROWS), 0.5)
    got = dict(zip(mixed.column(S.DOC_ID).to_pylist(), mixed.column(S.SCORE).to_pylist()))
    # a: ranker (0.52, 0.50, 0.10) -> (1, 0.952..., 0); BM25 (10, 30, 20) -> (0, 1, 0.5)
    assert got["d1"] == pytest.approx(0.5)
    assert got["d2"] == pytest.approx(0.5 * (0.40 / 0.42) + 0.5)
    assert got["d3"] == pytest.approx(0.25)
    assert got["d9"] == 0.0  # a query with one hit: nothing to scale, nothing reordered
    assert _order(rank_by_score(_scored(ROWS), first_stage_weight=0.5)) == ["d2", "d1", "d3"]


def test_blend_applies_before_the_tail_and_keeps_scores_decreasing():
    tail = pa.table({S.QUERY_ID: ["a", "a"], S.DOC_ID: ["d7", "d8"], S.RANK: pa.array([5, 4], pa.int64()),
                     S.SCORE: pa.array([1.0, 2.0], pa.float64())})
    ranked = rank_with_tail(_scored(ROWS), tail, first_stage_weight=0.5)
    assert _order(ranked) == ["d2", "d1", "d3", "d8", "d7"]
    a_scores = [s for q, s in zip(ranked.column(S.QUERY_ID).to_pylist(), ranked.column(S.SCORE).to_pylist())
                if q == "a"]
    assert a_scores == sorted(a_scores, reverse=True)


def test_blend_needs_the_first_stage_score_and_a_weight_in_range():
    with pytest.raises(Exception, match=FIRST_STAGE_SCORE):
        blend_first_stage(_scored(ROWS).drop_columns([FIRST_STAGE_SCORE]), 0.3)
    with pytest.raises(ConfigError, match="first_stage_weight"):
        RerankConfig(ranker=RankerConfig(model="m"), first_stage_weight=1.5)


def test_tail_ranks_follow_each_querys_rescored_hits_and_a_query_without_any_starts_at_one():
    tail = pa.table({S.QUERY_ID: ["b", "a", "c", "a", "c"], S.DOC_ID: ["t1", "t2", "t3", "t4", "t5"],
                     S.RANK: pa.array([2, 9, 4, 8, 3], pa.int64()), S.SCORE: pa.array([0.0] * 5, pa.float64())})
    ranked = rank_with_tail(_scored(ROWS), tail)
    got = {(q, d): (r, s) for q, d, r, s in zip(*(ranked.column(c).to_pylist()
                                                  for c in (S.QUERY_ID, S.DOC_ID, S.RANK, S.SCORE)))}
    # a: three rescored hits (lowest 0.10), then its tail in first-stage order: t4 (rank 8), t2 (9)
    assert got[("a", "t4")] == (4, pytest.approx(0.10 - 1)) and got[("a", "t2")] == (5, pytest.approx(0.10 - 2))
    assert got[("b", "t1")] == (2, pytest.approx(7.0 - 1))
    # c: no rescored hit (e.g. all of them named unknown documents): the tail alone, from rank 1
    assert [got[("c", "t5")][0], got[("c", "t3")][0]] == [1, 2]
    assert ranked.column(S.RANK).to_pylist()[:3] == [1, 2, 3]
    # no rescored hit at all
    only_tail = rank_with_tail(_scored(ROWS).slice(0, 0), tail)
    assert sorted(only_tail.column(S.RANK).to_pylist()) == [1, 1, 1, 2, 2]
