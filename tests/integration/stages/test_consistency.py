"""The consistency filter on local Ray, Lucene and a tiny cross-encoder, against a one-process recomputation."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from inpars_ray import schema as S
from inpars_ray.io.catalog import BUNDLED_ROOT, resolve
from inpars_ray.io.manifest import read_manifest
from inpars_ray.io.text import document_text
from inpars_ray.models.rankers import Ranker, RankerConfig
from inpars_ray.stages import index, retrieve
from inpars_ray.stages.consistency import INCONSISTENT, ConsistencyConfig, run_consistency, source_ranks
from inpars_ray.testing.tiny_bert import build_tiny_cross_encoder


def _candidates(path: Path) -> pa.Table:
    docs = [json.loads(line) for line in (BUNDLED_ROOT / "corpus.jsonl").read_text().splitlines()[:40:2]]
    rows = []
    for i, d in enumerate(docs):  # a few words of the document: BM25 usually finds it, the ranker decides
        rows.append({S.DOC_ID: d["_id"], S.QUERY_ID: f"gen-{i:03d}", S.QUERY: " ".join(d["text"].split()[2:7]),
                     S.TOKEN_LOGPROBS: [-0.5], S.MEAN_LOGPROB: -0.5, S.NUM_TOKENS: 5, S.PROMPT_NAME: "inpars",
                     S.MODEL: "m", S.BACKEND: "hf", S.FEWSHOT_IDS: [], S.ERROR: None, S.FILTER_SCORE: 0.0})
    table = pa.Table.from_pylist(rows, schema=S.FILTERED)
    (path / "kept").mkdir(parents=True)
    pq.write_table(table, path / "kept" / "part-0.parquet")
    return table


def test_consistency_keeps_exactly_the_queries_whose_source_is_in_the_top_k(ray_session, tmp_path):
    collection = resolve(str(BUNDLED_ROOT))
    index.build_index(collection, tmp_path / "index")
    cands = _candidates(tmp_path / "filter")
    model = build_tiny_cross_encoder(tmp_path / "ce")
    config = ConsistencyConfig(ranker=RankerConfig(str(model), max_length=64), k=3, depth=10, rows_per_call=37,
                               partitions=3)
    manifest = run_consistency(tmp_path / "filter", collection, tmp_path / "index", tmp_path / "out", config)

    # the same decision in one process: Lucene hits, tiny cross-encoder scores, source rank <= k
    hits = retrieve.retrieve(tmp_path / "index", cands.select([S.QUERY_ID, S.QUERY]), k=10)
    docs = {json.loads(x)["_id"]: json.loads(x) for x in (BUNDLED_ROOT / "corpus.jsonl").read_text().splitlines()}
    qtext = dict(zip(cands.column(S.QUERY_ID).to_pylist(), cands.column(S.QUERY).to_pylist()))
    source = dict(zip(cands.column(S.QUERY_ID).to_pylist(), cands.column(S.DOC_ID).to_pylist()))
    ranker = Ranker(RankerConfig(str(model), max_length=64))
    qids, dids = hits.column(S.QUERY_ID).to_pylist(), hits.column(S.DOC_ID).to_pylist()
    scores = ranker.score([qtext[q] for q in qids], [document_text(docs[d].get("title"), docs[d]["text"]) for d in dids])
    ranks = source_ranks(pa.table({S.QUERY_ID: qids, S.DOC_ID: dids, S.SCORE: scores,
                                   S.POS_DOC_ID: [source[q] for q in qids]}))
    expected = {q for q, r in zip(ranks.column(S.QUERY_ID).to_pylist(), ranks.column("source_rank").to_pylist())
                if r is not None and r <= 3}

    kept = pads.dataset(str(tmp_path / "out" / "kept"), format="parquet").to_table()
    dropped = pads.dataset(str(tmp_path / "out" / "dropped"), format="parquet").to_table()
    assert set(kept.column(S.QUERY_ID).to_pylist()) == expected
    assert 0 < len(expected) < cands.num_rows  # the check decides something
    assert kept.num_rows + dropped.num_rows == cands.num_rows
    assert set(dropped.column(S.DROP_REASON).to_pylist()) == {INCONSISTENT}
    assert manifest["counts"]["kept"] == len(expected) and manifest["counts"]["candidates"] == cands.num_rows
    # a rerun with the same inputs does nothing
    again = run_consistency(tmp_path / "filter", collection, tmp_path / "index", tmp_path / "out", config)
    assert again == read_manifest(tmp_path / "out")

    # the CLI verb builds the same config from its options and keeps the same queries
    from inpars_ray import cli

    argv = ["consistency", "--dataset", str(BUNDLED_ROOT), "--candidates", str(tmp_path / "filter"),
            "--index", str(tmp_path / "index"), "--out", str(tmp_path / "cli"), "--model", str(model), "--k", "3",
            "--depth", "10", "--max-length", "64", "--partitions", "2"]
    assert cli.main(argv) == 0
    by_cli = pads.dataset(str(tmp_path / "cli" / "kept"), format="parquet").to_table()
    assert set(by_cli.column(S.QUERY_ID).to_pylist()) == expected
