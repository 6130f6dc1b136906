"""The dev set judged by a fused pseudo-reference (LARMOR-style): the pure qrels builder and the settings."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.stages.devset import DevSetConfig, pseudo_qrels


def _pairs(rows: list[tuple[str, str]]) -> pa.Table:
    return pa.table({S.QUERY_ID: [q for q, _ in rows], S.DOC_ID: [d for _, d in rows]})


def _sources(rows: list[tuple[str, str]]) -> pa.Table:
    return pa.table({S.QUERY_ID: [q for q, _ in rows], S.DOC_ID: [d for _, d in rows],
                     S.RELEVANCE: pa.array([1] * len(rows), pa.int64())}, schema=S.QRELS)


def _judged(table: pa.Table) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for q, d, r in zip(*(table.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RELEVANCE))):
        assert r == 1
        out.setdefault(q, set()).add(d)
    return out


def test_source_document_and_the_fused_top_documents_are_relevant():
    pairs = _pairs([("q1", "a"), ("q1", "b"), ("q1", "c"), ("q1", "src1"), ("q2", "x"), ("q2", "y"), ("q3", "z")])
    fused = np.array([0.1, 0.9, 0.5, 2.0, -1.0, 3.0, 9.0])
    qrels = pseudo_qrels(pairs, fused, _sources([("q1", "src1"), ("q2", "src2")]), top=2)
    # q1: the source (ranked first by the fusion: it takes no slot of the two) plus b and c; q2: its
    # source (not among its hits) plus y and x; q3 is not a dev query and gets no judgement
    assert _judged(qrels) == {"q1": {"src1", "b", "c"}, "q2": {"src2", "y", "x"}}
    assert qrels.schema == S.QRELS


def test_ties_break_by_document_id_whatever_the_row_order():
    rows = [("q", "d3"), ("q", "d1"), ("q", "d2")]
    fused = np.zeros(3)
    first = pseudo_qrels(_pairs(rows), fused, _sources([("q", "s")]), top=1)
    second = pseudo_qrels(_pairs(rows[::-1]), fused, _sources([("q", "s")]), top=1)
    assert _judged(first) == _judged(second) == {"q": {"s", "d1"}}


def test_judge_settings_are_checked():
    with pytest.raises(ConfigError, match="judge"):
        DevSetConfig(judge="teacher-only")
    with pytest.raises(ConfigError, match="pseudo_relevant"):
        DevSetConfig(pseudo_relevant=0)


def test_a_fused_judge_needs_a_teacher():
    from inpars_ray.config import PipelineConfig

    with pytest.raises(ConfigError, match="inpars.teacher"):
        PipelineConfig.from_dict({"inpars": {"tune": {"num_samples": 1, "dev": {"judge": "fused"}}}})
    config = PipelineConfig.from_dict({"inpars": {"teacher": {"rankers": [{"model": "local:tiny-monot5"}]},
                                                  "tune": {"num_samples": 1, "dev": {"judge": "fused"}}}})
    assert config.inpars.tune.dev.judge == "fused"
