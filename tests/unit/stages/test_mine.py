"""Pure functions of the mining stage (no Ray, no JVM)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError, InparsError
from inpars_ray.stages import mine as M


def run_table(hits: dict[str, list[str]]) -> pa.Table:
    rows = [(q, d, r + 1) for q, docs in hits.items() for r, d in enumerate(docs)]
    return pa.table({S.QUERY_ID: [r[0] for r in rows], S.DOC_ID: [r[1] for r in rows],
                     S.RANK: [r[2] for r in rows], S.SCORE: [10.0 - r[2] for r in rows]}, schema=S.RUN)


def query_table(qids: list[str], pos: list[str]) -> pa.Table:
    return pa.table({S.QUERY_ID: qids, S.QUERY: [f"text of {q}" for q in qids], S.DOC_ID: pos,
                     S.FILTER_SCORE: [float(i) for i in range(len(qids))]})


def test_sample_never_returns_positive_and_is_seeded_per_query():
    ids = np.array([f"d{i}" for i in range(30)], dtype=object)
    ranks = np.arange(1, 31)
    seen = set()
    for seed in range(20):
        negs, nranks, eligible, pos_rank = M.sample_negatives("q1", "d7", ids, ranks, 3, seed)
        assert "d7" not in negs and len(negs) == 3 and len(set(negs)) == 3
        assert eligible == 29 and pos_rank == 8
        assert nranks == sorted(nranks) and all(ids[r - 1] == d for d, r in zip(negs, nranks))
        assert M.sample_negatives("q1", "d7", ids, ranks, 3, seed)[0] == negs  # same seed, same draw
        seen.update(negs)
    assert len(seen) > 10  # different seeds draw different documents


def test_sample_draws_uniformly_from_hits():
    ids = np.array([f"d{i}" for i in range(10)], dtype=object)
    counts = dict.fromkeys(ids, 0)
    for q in range(3000):
        (neg,), _, _, _ = M.sample_negatives(f"q{q}", "d0", ids, np.arange(1, 11), 1, 5)
        counts[neg] += 1
    assert counts["d0"] == 0
    observed = np.array([counts[d] for d in ids[1:]])
    # chi-square goodness of fit against uniform over 9 documents (df=8; 26.1 is the 0.001 critical value)
    expected = 3000 / 9
    assert ((observed - expected) ** 2 / expected).sum() < 26.1


def test_too_few_hits_keeps_what_there_is():
    ids = np.array(["pos", "a"], dtype=object)
    negs, _, eligible, pos_rank = M.sample_negatives("q", "pos", ids, np.array([1, 2]), 4, 0)
    assert negs == ["a"] and eligible == 1 and pos_rank == 1
    assert M.sample_negatives("q", "pos", np.array([], dtype=object), np.array([], dtype=int), 1, 0)[:3] == ([], [], 0)


def test_mine_batch_does_not_depend_on_row_order_or_batching():
    hits = {f"q{i}": [f"d{(i * 7 + j) % 40}" for j in range(15)] for i in range(12)}
    queries = query_table(list(hits), [f"d{(i * 7 + 3) % 40}" for i in range(12)])
    whole = M.mine_batch(queries, run_table(hits), 2, seed=3).sort_by(S.QUERY_ID)
    run = run_table(hits)
    pieces = [M.mine_batch(queries.slice(a, 4), run.take(np.random.default_rng(a).permutation(run.num_rows)), 2, 3)
              for a in (8, 0, 4)]
    assert pa.concat_tables(pieces).sort_by(S.QUERY_ID).equals(whole)
    for row in whole.to_pylist():
        assert row[S.POS_DOC_ID] not in row[M._NEG_IDS]
        assert set(row[M._NEG_IDS]) <= set(hits[row[S.QUERY_ID]])
        assert row[S.NUM_ELIGIBLE] == 14 and row[S.POS_RANK] == 4


def test_report_explode_and_tsv_field():
    queries = query_table(["qa", "qb", "qc"], ["p", "p", "p"])
    mined = M.mine_batch(queries, run_table({"qa": ["p", "x", "y", "z"], "qb": ["p"]}), 2, 0)
    report = M.short_report(mined, 2)
    assert report.schema.equals(S.MINE_SHORT)
    assert dict(zip(report.column(S.QUERY_ID).to_pylist(), report.column(S.DROP_REASON).to_pylist())) == \
        {"qb": M.TOO_FEW_HITS, "qc": M.NO_HITS}
    triples = M.explode(mined)
    assert triples.column(S.QUERY_ID).to_pylist() == ["qa", "qa"]
    assert triples.column(S.FILTER_SCORE).to_pylist() == [0.0, 0.0]
    assert M.tsv_field(pa.array(["a\tb\nc\r"])).to_pylist() == ["a b c "]


def test_attach_text_errors_on_unknown_document():
    rows = pa.table({S.NEG_DOC_ID: ["a", "b"]})
    docs = pa.table({S.DOC_ID: ["a", "b"], S.TITLE: ["T", ""], S.TEXT: ["x", "y"]})
    assert M.attach_text(rows, docs, S.NEG_DOC_ID, S.NEG_TEXT).column(S.NEG_TEXT).to_pylist() == ["T x", "y"]
    with pytest.raises(InparsError, match="'b'"):
        M.attach_text(rows, docs.slice(0, 1), S.NEG_DOC_ID, S.NEG_TEXT)


def test_config_validation():
    with pytest.raises(ConfigError):
        M.MineConfig(negatives=0)
    with pytest.raises(ConfigError):
        M.MineConfig(seed=-1)
