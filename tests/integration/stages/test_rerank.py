"""Rerank stage: monoT5 rescoring of a BM25 run through Ray, compared with direct scoring."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from inpars_ray import schema as S
from inpars_ray.io import catalog, trec
from inpars_ray.io.load import read_queries
from inpars_ray.io.text import document_text
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.stages import index, retrieve
from inpars_ray.stages.rerank import RerankConfig, rank_by_score, rerank_run
from tests.conftest import BUNDLED


def test_rank_by_score_orders_within_each_query_and_breaks_ties_by_doc_id():
    import pyarrow as pa

    scored = pa.table({S.QUERY_ID: ["b", "a", "a", "a", "b"], S.DOC_ID: ["x", "d2", "d1", "d3", "y"],
                       S.SCORE: [0.1, 0.5, 0.5, 0.9, 0.7]})
    run = rank_by_score(scored)
    assert list(zip(*(run.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RANK)))) == [
        ("a", "d3", 1), ("a", "d1", 2), ("a", "d2", 3), ("b", "y", 1), ("b", "x", 2)]


def _bm25_run(tmp_path: Path, n_queries: int, k: int):
    """(the bundled collection, its queries, BM25's top ``k`` of its first ``n_queries``, written to bm25.trec)."""
    collection = catalog.resolve(str(BUNDLED))
    index.build_index(collection, tmp_path / "index")
    queries, _ = read_queries(collection)
    first = retrieve.retrieve(tmp_path / "index", queries.slice(0, n_queries), k=k)
    trec.write_trec_run(first, tmp_path / "bm25.trec")
    return collection, queries, first


def test_rerank_matches_direct_monot5_scores(ray_session, tmp_path: Path):
    import transformers

    from inpars_ray.models.monot5 import score_pairs
    from inpars_ray.testing.tiny_t5 import build_tiny_monot5

    model_dir = build_tiny_monot5(tmp_path / "monot5")
    collection, queries, first = _bm25_run(tmp_path, n_queries=6, k=20)

    manifest = rerank_run(collection, tmp_path / "bm25.trec", tmp_path / "rerank.trec",
                          RerankConfig(ranker=RankerConfig(str(model_dir)), depth=10, partitions=3, rows_per_call=16))
    out = trec.read_trec_run(tmp_path / "rerank.trec")
    assert manifest["counts"]["pairs_scored"] + manifest["counts"]["tail_rows"] == out.num_rows == first.num_rows
    assert manifest["counts"]["pairs_scored"] == first.filter(
        np.array(first.column(S.RANK).to_pylist()) <= 10).num_rows

    # independent check: score the same pairs in this process and compare scores and order
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    docs = {d["_id"]: document_text(d.get("title"), d["text"])
            for d in map(__import__("json").loads, (BUNDLED / "corpus.jsonl").read_text().splitlines())}
    qtext = dict(zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist()))
    every = list(zip(*(out.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RANK, S.SCORE))))
    # below the depth, BM25's hits follow in BM25's order, with scores still decreasing
    bm25_order = list(zip(*(first.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RANK))))
    assert sorted((q, r, d) for q, d, r, _ in every if r > 10) == sorted((q, r, d) for q, d, r in bm25_order if r > 10)
    for qid in {r[0] for r in every}:
        by_rank = sorted((r[2], r[3]) for r in every if r[0] == qid)
        assert all(a[1] > b[1] for a, b in zip(by_rank[10:], by_rank[11:]))  # the tail
        assert len(by_rank) <= 10 or by_rank[9][1] > by_rank[10][1]  # below the last rescored hit
    rows = [r for r in every if r[2] <= 10]
    expected = score_pairs(model, tok, [qtext[q] for q, *_ in rows], [docs[d] for _, d, *_ in rows], 512)
    assert np.allclose([r[3] for r in rows], expected, atol=1e-5)
    for qid in {r[0] for r in rows}:
        mine = [r for r in rows if r[0] == qid]
        assert [r[2] for r in mine] == list(range(1, len(mine) + 1))
        assert all(a[3] >= b[3] for a, b in zip(mine, mine[1:]))

    # all weight on the first stage: the rescored hits come back in BM25's order (a new stage key)
    blended = rerank_run(collection, tmp_path / "bm25.trec", tmp_path / "blend.trec",
                         RerankConfig(ranker=RankerConfig(str(model_dir)), depth=10, partitions=3, rows_per_call=16,
                                      first_stage_weight=1.0))
    assert blended["counts"]["pairs_scored"] == manifest["counts"]["pairs_scored"]
    bm25_score = {(q, d): sc for q, d, sc in zip(*(first.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID,
                                                                                          S.SCORE)))}
    again = trec.read_trec_run(tmp_path / "blend.trec")
    ranked = sorted(zip(*(again.column(c).to_pylist() for c in (S.QUERY_ID, S.RANK, S.DOC_ID))))
    for qid in {q for q, *_ in ranked}:
        firsts = [bm25_score[(q, d)] for q, r, d in ranked if q == qid and r <= 10]
        assert firsts == sorted(firsts, reverse=True)


def test_rerank_with_a_cross_encoder_keeps_every_pair_and_matches_a_direct_forward_pass(ray_session, tmp_path: Path):
    import json

    import torch
    import transformers

    from inpars_ray.testing.tiny_bert import build_tiny_cross_encoder

    model_dir = build_tiny_cross_encoder(tmp_path / "ce")
    collection, queries, first = _bm25_run(tmp_path, n_queries=5, k=12)

    manifest = rerank_run(collection, tmp_path / "bm25.trec", tmp_path / "rerank.trec",
                          RerankConfig(ranker=RankerConfig(str(model_dir), batch_size=3, max_length=128), depth=12,
                                       partitions=2, rows_per_call=7))
    out = trec.read_trec_run(tmp_path / "rerank.trec")
    # every pair of the first-stage run comes back, once
    pairs = set(zip(first.column(S.QUERY_ID).to_pylist(), first.column(S.DOC_ID).to_pylist()))
    got = list(zip(out.column(S.QUERY_ID).to_pylist(), out.column(S.DOC_ID).to_pylist()))
    assert len(got) == len(set(got)) == manifest["counts"]["pairs_scored"] and set(got) == pairs

    # each score is the model's logit for that pair, computed here one pair at a time
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    docs = {d["_id"]: document_text(d.get("title"), d["text"])
            for d in map(json.loads, (BUNDLED / "corpus.jsonl").read_text().splitlines())}
    qtext = dict(zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist()))
    with torch.no_grad():
        expected = [model(**tok(qtext[q], docs[d], truncation=True, max_length=128, return_tensors="pt"))
                    .logits[0, 0].item() for q, d in got]
    assert np.allclose(out.column(S.SCORE).to_pylist(), expected, atol=1e-5)


def test_actors_running_two_calls_at_once_score_as_one_at_a_time(ray_session, tmp_path: Path):
    import pyarrow as pa
    import ray

    from inpars_ray.models.rankers import score_dataset
    from inpars_ray.testing.tiny_bert import build_tiny_cross_encoder

    config = RankerConfig(str(build_tiny_cross_encoder(tmp_path / "ce")), batch_size=3, max_length=64)
    rows = [{S.QUERY_ID: f"q{i}", S.QUERY: f"query {i} " * (1 + i % 3), S.TEXT: f"document {i} " * (2 + i % 9)}
            for i in range(40)]

    def scored(overlap: bool) -> dict:
        ds = score_dataset(ray.data.from_items(rows, override_num_blocks=4), config, num_actors=2, batch_rows=8,
                           overlap=overlap)
        table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
        assert table.column_names == [S.QUERY_ID, S.QUERY, S.TEXT, S.SCORE]
        return dict(zip(table.column(S.QUERY_ID).to_pylist(), table.column(S.SCORE).to_pylist()))

    two, one = scored(True), scored(False)
    assert sorted(two) == sorted(one) == sorted(r[S.QUERY_ID] for r in rows)
    assert np.allclose([two[q] for q in sorted(two)], [one[q] for q in sorted(two)], atol=1e-5)


def test_hits_naming_an_unknown_document_or_query_are_counted_not_scored(ray_session, tmp_path: Path):
    from inpars_ray.testing.tiny_bert import build_tiny_cross_encoder

    collection = catalog.resolve(str(BUNDLED))
    queries, _ = read_queries(collection)
    qid = queries.column(S.QUERY_ID)[0].as_py()
    doc_ids = [d["_id"] for d in map(json.loads, (BUNDLED / "corpus.jsonl").read_text().splitlines())]
    lines = [f"{qid} Q0 {d} {r} {10.0 - r} bm25" for r, d in enumerate(doc_ids[:3], 1)]
    lines += [f"{qid} Q0 no-such-doc 4 5.0 bm25", f"no-such-query Q0 {doc_ids[0]} 1 9.0 bm25"]
    (tmp_path / "first.trec").write_text("\n".join(lines) + "\n")
    ranker = RankerConfig(str(build_tiny_cross_encoder(tmp_path / "ce")), max_length=64)
    manifest = rerank_run(collection, tmp_path / "first.trec", tmp_path / "out.trec",
                          RerankConfig(ranker=ranker, depth=10, partitions=2))
    assert manifest["counts"]["pairs_scored"] == 3 and manifest["counts"]["pairs_unknown"] == 2
    out = trec.read_trec_run(tmp_path / "out.trec")
    assert sorted(out.column(S.DOC_ID).to_pylist()) == sorted(doc_ids[:3])
