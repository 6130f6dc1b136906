"""The one BEIR-layout writer: what the loader reads, a folder only once complete, and a concurrent build's
complete folder kept."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from inpars_ray.errors import CollectionError
from inpars_ray.io import catalog
from inpars_ray.io.beir_writer import BeirWriter
from inpars_ray.io.load import iter_lines, parse_corpus_lines, read_qrels, read_queries


def write(out: Path, replace: bool = True, tag: str = "a") -> None:
    with BeirWriter(out, replace=replace) as w:
        assert w.corpus({"_id": f"d{i}", "title": "", "text": f"doc {i} {tag}"} for i in range(3)) == 3
        assert w.queries([{"_id": "q1", "text": "a query é"}]) == 1
        assert w.qrels("test", iter([("q1", "d0", 1), ("q1", "d2", 0)])) == 2
        w.finish({"tag": tag})


def test_what_it_writes_the_loader_reads(tmp_path: Path):
    write(tmp_path / "c")
    collection = catalog.resolve(str(tmp_path / "c"))
    corpus, bad = parse_corpus_lines(iter_lines(collection, collection.corpus_path()), "corpus.jsonl", 1)
    assert len(bad) == 0 and corpus.column("doc_id").to_pylist() == ["d0", "d1", "d2"]
    queries, _ = read_queries(collection)
    assert queries.column("query").to_pylist() == ["a query é"]
    assert read_qrels(collection, "test", queries)[0].column("relevance").to_pylist() == [1, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no staging folder left


def test_nothing_appears_without_the_manifest_or_after_a_failure(tmp_path: Path):
    with pytest.raises(CollectionError, match="without its manifest"):
        with BeirWriter(tmp_path / "c") as w:
            w.corpus([{"_id": "d0", "text": "x"}])
    with pytest.raises(ValueError):
        with BeirWriter(tmp_path / "c") as w:
            w.corpus({"_id": "d0", "text": "x"} if i < 2 else int("boom") for i in range(3))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CollectionError, match="cannot name a file"):
        with BeirWriter(tmp_path / "c") as w:
            w.qrels("../x", [])


def test_replace_rebuilds_and_keep_leaves_a_complete_folder(tmp_path: Path):
    out = tmp_path / "c"
    write(out, tag="first")
    write(out, replace=False, tag="second")  # another build got there first: its folder stays
    assert json.loads((out / "manifest.json").read_text()) == {"tag": "first"}
    write(out, replace=True, tag="third")
    assert json.loads((out / "manifest.json").read_text()) == {"tag": "third"}
    assert "third" in (out / "corpus.jsonl").read_text() and [p.name for p in tmp_path.iterdir()] == ["c"]
