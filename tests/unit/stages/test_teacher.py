"""The teacher stage's pure functions and the distillation losses (no Ray)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError, InparsError
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.stages.teacher import (
    NEG_SCORE,
    POS_SCORE,
    TeacherConfig,
    _cap_negatives,
    attach_scores,
    distinct_pairs,
    fuse,
)


def _triples(rows):
    cols = list(zip(*rows))
    return pa.table({S.QUERY_ID: list(cols[0]), S.QUERY: [f"q {q}" for q in cols[0]], S.POS_DOC_ID: list(cols[1]),
                     S.POS_TEXT: [f"text {d}" for d in cols[1]], S.NEG_DOC_ID: list(cols[2]),
                     S.NEG_TEXT: [f"text {d}" for d in cols[2]], S.NEG_RANK: pa.array(cols[3], pa.int64()),
                     S.FILTER_SCORE: pa.array([0.0] * len(rows), pa.float64())}).cast(S.TRIPLES)


def test_each_pair_is_scored_once_however_many_triples_name_it():
    t = _triples([("q1", "p", "n1", 3), ("q1", "p", "n2", 1), ("q2", "p", "n1", 5)])
    pairs = distinct_pairs(t)
    got = list(zip(pairs[S.QUERY_ID].to_pylist(), pairs[S.DOC_ID].to_pylist()))
    assert got == [("q1", "n1"), ("q1", "n2"), ("q1", "p"), ("q2", "n1"), ("q2", "p")]
    assert pairs[S.TEXT].to_pylist()[2] == "text p" and pairs[S.QUERY].to_pylist()[0] == "q q1"


def test_cap_keeps_the_negatives_bm25_ranked_highest():
    t = _triples([("q1", "p", "n1", 3), ("q1", "p", "n2", 1), ("q1", "p", "n3", 2), ("q2", "p", "n9", 7)])
    capped = _cap_negatives(t, 2)
    assert sorted(zip(capped[S.QUERY_ID].to_pylist(), capped[S.NEG_DOC_ID].to_pylist())) == [
        ("q1", "n2"), ("q1", "n3"), ("q2", "n9")]
    assert _cap_negatives(t, None).num_rows == 4


def test_scores_are_attached_to_both_sides_of_every_triple_and_a_missing_one_raises():
    t = _triples([("q1", "p", "n1", 3), ("q1", "p", "n2", 1)])
    scored = pa.table({S.QUERY_ID: ["q1", "q1", "q1"], S.DOC_ID: ["p", "n1", "n2"], S.SCORE: [0.9, 0.2, 0.4]})
    out = attach_scores(t, scored)
    assert out[POS_SCORE].to_pylist() == [0.9, 0.9] and out[NEG_SCORE].to_pylist() == [0.2, 0.4]
    assert out.num_rows == t.num_rows
    with pytest.raises(InparsError, match="not scored"):
        attach_scores(t, scored.slice(0, 2))


def test_one_teacher_keeps_its_raw_scores_and_several_are_standardised_and_weighted():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0])
    assert fuse([a], [(0.0, 1.0)], [1.0]) is a
    stats = [(a.mean(), a.std()), (b.mean(), b.std())]
    fused = fuse([a, b], stats, [3.0, 1.0])
    want = 0.75 * (a - a.mean()) / a.std() + 0.25 * (b - b.mean()) / b.std()
    assert np.allclose(fused, want)


def test_config_checks_weights_and_the_test_row():
    r = RankerConfig(model="m", family="bi-encoder")
    with pytest.raises(ConfigError, match="weights"):
        TeacherConfig(rankers=(r, r), weights=(1.0,))
    with pytest.raises(ConfigError, match="rerank_test"):
        TeacherConfig(rankers=(r, r), rerank_test=True)
    with pytest.raises(ConfigError, match="fusion"):
        TeacherConfig(rankers=(r,), fusion="max")


def test_distillation_needs_a_teacher():
    from inpars_ray.config import PipelineConfig

    with pytest.raises(ConfigError, match="teacher"):
        PipelineConfig.from_dict({"inpars": {"train": {"loss": "margin-mse", "family": "bi-encoder"}}})


def test_the_positive_rank_counts_the_negatives_scored_at_or_above_it_within_its_query():
    from inpars_ray.stages.teacher import NEG_SCORE, POS_SCORE, positive_ranks

    t = pa.table({S.QUERY_ID: ["a", "a", "a", "b", "b", "c"], S.POS_DOC_ID: ["d1"] * 3 + ["d2"] * 2 + ["d3"],
                  POS_SCORE: [0.5, 0.5, 0.5, 0.1, 0.1, 0.9], NEG_SCORE: [0.2, 0.5, 0.7, 0.0, -1.0, 0.95]})
    assert positive_ranks(t).tolist() == [3, 3, 3, 1, 1, 2]  # a tie counts against the positive
    assert positive_ranks(t.slice(0, 0)).tolist() == []
