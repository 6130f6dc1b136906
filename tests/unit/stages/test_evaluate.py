"""evaluate: ir-measures over Arrow tables; judged queries without hits count as zero."""
from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.stages.evaluate import evaluate_run


def run_table(rows):
    q, d, s = zip(*rows)
    return pa.table({S.QUERY_ID: list(q), S.DOC_ID: list(d), S.RANK: list(range(1, len(q) + 1)), S.SCORE: list(s)})


QRELS = pa.table({S.QUERY_ID: ["q1", "q1", "q2"], S.DOC_ID: ["a", "b", "c"], S.RELEVANCE: [2, 1, 1]})


def test_reciprocal_rank_and_missing_queries_count_as_zero():
    run = run_table([("q1", "x", 3.0), ("q1", "b", 2.0), ("q1", "a", 1.0)])  # q2 has no hits at all
    result = evaluate_run(run, QRELS, ["RR@10", "R@1000"])
    assert result.aggregate["RR@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert result.aggregate["R@1000"] == pytest.approx((1.0 + 0) / 2)
    assert result.num_queries == 2 and result.num_queries_without_hits == 1
    assert ("q2", "RR@10", 0.0) in result.per_query


def test_excluded_queries_leave_both_qrels_and_run():
    run = run_table([("q1", "a", 1.0), ("q2", "z", 1.0)])
    result = evaluate_run(run, QRELS, ["RR@10"], exclude_query_ids=["q2"])
    assert result.aggregate["RR@10"] == pytest.approx(1.0) and result.num_queries == 1


def test_ndcg_uses_graded_relevance():
    perfect = evaluate_run(run_table([("q1", "a", 2.0), ("q1", "b", 1.0)]), QRELS, ["nDCG@10"], ["q2"])
    swapped = evaluate_run(run_table([("q1", "b", 2.0), ("q1", "a", 1.0)]), QRELS, ["nDCG@10"], ["q2"])
    assert perfect.aggregate["nDCG@10"] == pytest.approx(1.0)
    assert swapped.aggregate["nDCG@10"] < 1.0


def test_unknown_measure_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown measure 'nope@3'"):
        evaluate_run(run_table([("q1", "a", 1.0)]), QRELS, ["nope@3"])


def test_python_dash_m_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "inpars_ray", "--help"], capture_output=True, text=True, check=True)
    for verb in ("index", "retrieve", "evaluate", "run", "generate", "filter", "mine", "train"):
        assert verb in out.stdout
