"""``inpars-ray rerank``: every input pair within the depth is scored exactly once, for each ranker family
(read from the checkpoint, or given with --family); a rerun skips."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from inpars_ray import cli
from inpars_ray.io import catalog, trec
from inpars_ray.io.load import read_queries
from inpars_ray.stages import index, retrieve
from tests.conftest import BUNDLED


def _model(family: str, path: Path) -> tuple[Path, list[str]]:
    if family == "monot5":
        from inpars_ray.testing.tiny_t5 import build_tiny_monot5

        return build_tiny_monot5(path), []  # the family is read from the checkpoint
    from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder, build_tiny_cross_encoder

    build = build_tiny_cross_encoder if family == "cross-encoder" else build_tiny_bi_encoder
    return build(path), ["--family", family]


@pytest.mark.parametrize("family", ["monot5", "cross-encoder", "bi-encoder"])
def test_rerank_verb_scores_every_pair_once_and_a_rerun_skips(ray_session, tmp_path: Path, capsys, family):
    model, family_args = _model(family, tmp_path / "model")
    collection = catalog.resolve(str(BUNDLED))
    index.build_index(collection, tmp_path / "index")
    queries, _ = read_queries(collection)
    first = retrieve.retrieve(tmp_path / "index", queries.slice(0, 5), k=12)
    trec.write_trec_run(first, tmp_path / "bm25.trec")
    out = tmp_path / "reranked.trec"
    argv = ["rerank", "--dataset", str(BUNDLED), "--run", str(tmp_path / "bm25.trec"), "--model", str(model),
            "--out", str(out), "--depth", "8", "--partitions", "2", *family_args]
    assert cli.main(argv) == 0
    assert "reranked" in capsys.readouterr().out

    expected = collections.Counter((q, d) for q, d, r in zip(*(first.column(c).to_pylist()
                                                              for c in ("query_id", "doc_id", "rank"))) if r <= 8)
    lines = [line.split() for line in out.read_text().splitlines()]
    got = collections.Counter((q, d) for q, _, d, r, *_ in lines if int(r) <= 8)
    assert got == expected  # each pair once, none lost
    # below the depth, BM25's own hits follow in its order (keep_tail, the default)
    tail = [(q, d, int(r)) for q, _, d, r, *_ in lines if int(r) > 8]
    assert sorted(tail) == sorted((q, d, r) for q, d, r in zip(*(first.column(c).to_pylist()
                                                                  for c in ("query_id", "doc_id", "rank"))) if r > 8)
    manifest = json.loads((tmp_path / "reranked.trec.manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["pairs_scored"] == sum(expected.values())
    assert manifest["config"]["rerank"]["depth"] == 8

    before = (out.stat().st_mtime_ns, (tmp_path / "reranked.trec.manifest.json").stat().st_mtime_ns)
    assert cli.main(argv) == 0  # same run, same config: nothing is redone
    assert (out.stat().st_mtime_ns, (tmp_path / "reranked.trec.manifest.json").stat().st_mtime_ns) == before
