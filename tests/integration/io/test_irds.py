"""irds:<id> specs against the real ir_datasets library, offline: an IR_DATASETS_HOME prepared as ir_datasets
leaves it after downloading BEIR's SciFact (``beir/scifact/source.zip``, the zip BEIR publishes, here holding
the bundled collection), and no network (any download attempt meets a closed proxy port at once)."""
from __future__ import annotations

import contextlib
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from inpars_ray.errors import CollectionError, DatasetUnavailableError
from inpars_ray.io import catalog, irds
from inpars_ray.io.load import LoadConfig, iter_lines, parse_corpus_lines, read_qrels, read_queries
from tests.conftest import BUNDLED

pytest.importorskip("ir_datasets")

BEIR_FILES = ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv")


@contextlib.contextmanager
def fresh_ir_datasets() -> Iterator[None]:
    """ir_datasets fixes each dataset's folder from IR_DATASETS_HOME when it is imported: import it afresh
    for the test's home, and give the session its own modules back afterwards."""
    def ours(name: str) -> bool:
        return name == "ir_datasets" or name.startswith("ir_datasets.")

    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    for k in saved:
        del sys.modules[k]
    try:
        yield
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


def scifact_zip(home: Path) -> Path:
    """``beir/scifact/source.zip`` where ir_datasets keeps BEIR's scifact.zip once downloaded (its
    ``etc/downloads.json`` cache_path): present, it is used without any download."""
    path = home / "beir" / "scifact" / "source.zip"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name in BEIR_FILES:
            zf.write(BUNDLED / name, f"scifact/{name}")
    return path


@pytest.fixture()
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty IR_DATASETS_HOME, no network, a fresh ir_datasets; yields the home."""
    home = tmp_path / "irds-home"
    home.mkdir()
    monkeypatch.setenv("IR_DATASETS_HOME", str(home))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # the discard port: refused at once
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IR_DATASETS_DL_TRIES", "1")
    with fresh_ir_datasets():
        yield home


@pytest.fixture()
def scifact_home(offline: Path) -> Path:
    scifact_zip(offline)
    return offline


def bundled_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (BUNDLED / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def test_an_irds_id_is_materialised_once_in_beir_layout_and_reused(scifact_home: Path, tmp_path: Path):
    import ir_datasets

    cache = tmp_path / "cache"
    collection = catalog.resolve("irds:beir/scifact/test", cache)
    root = Path(collection.root)
    assert root.parent == cache / "irds" and collection.is_local
    collection.check_layout("test")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["ids"] == {"dataset": "beir/scifact/test", "docs": "beir/scifact", "queries": "beir/scifact/test",
                               "qrels": "beir/scifact/test"}
    assert manifest["split"] == "test" and manifest["ir_datasets_version"] == ir_datasets.__version__
    assert manifest["doc_type"] == "BeirTitleDoc" and manifest["doc_fields"] == {"title": "title", "text": "text"}
    assert collection.source["ids"] == manifest["ids"] and collection.source["ir_datasets_version"] == ir_datasets.__version__
    assert collection.name == "scifact"  # picks SciFact's prompt template, not "test"'s

    # the engine's loader reads what was written, and it is the collection ir_datasets served
    corpus, bad = parse_corpus_lines(iter_lines(collection, collection.corpus_path()), "corpus.jsonl", 1, LoadConfig())
    assert len(bad) == 0
    expected = {d["_id"]: (d.get("title", ""), d["text"]) for d in bundled_rows("corpus.jsonl")}
    got = dict(zip(corpus.column("doc_id").to_pylist(), zip(corpus.column("title").to_pylist(),
                                                             corpus.column("text").to_pylist())))
    assert got == expected
    queries, _ = read_queries(collection)
    qrels, _ = read_qrels(collection, "test", queries)
    test_lines = (BUNDLED / "qrels" / "test.tsv").read_text().splitlines()[1:]
    assert qrels.num_rows == len(test_lines) == manifest["counts"]["qrels"]
    test_qids = {line.split("\t")[0] for line in test_lines}
    assert set(queries.column("query_id").to_pylist()) == test_qids  # the split's queries only
    query_text = {q["_id"]: q["text"] for q in bundled_rows("queries.jsonl")}
    assert dict(zip(*(queries.column(c).to_pylist() for c in ("query_id", "query")))) == {q: query_text[q] for q in test_qids}
    assert manifest["counts"] == {"documents": len(expected), "queries": len(test_qids), "qrels": len(test_lines),
                                  "duplicate_judgements_dropped": 0}

    # a second resolve reuses the folder without reading ir_datasets' data (gone here) at all
    written = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    (scifact_home / "beir" / "scifact" / "source.zip").unlink()
    again = catalog.resolve("irds:beir/scifact/test", cache)
    assert again.root == collection.root and {p: p.stat().st_mtime_ns for p in root.rglob("*")} == written


def test_another_split_gets_its_own_folder_and_qrels_name(scifact_home: Path, tmp_path: Path):
    train = catalog.resolve("irds:beir/scifact/train", tmp_path / "cache")
    train.check_layout("train")
    assert not Path(train.qrels_path("test")).exists()
    train_lines = (BUNDLED / "qrels" / "train.tsv").read_text().splitlines()[1:]
    assert read_qrels(train, "train", read_queries(train)[0])[0].num_rows == len(train_lines)


def test_a_crash_mid_corpus_leaves_nothing_that_looks_complete(scifact_home: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache"
    real, seen = irds.doc_row, []

    def dies_at_the_100th(doc, mapping):
        seen.append(doc.doc_id)
        if len(seen) == 100:
            raise KeyboardInterrupt  # the driver killed mid-way
        return real(doc, mapping)

    monkeypatch.setattr(irds, "doc_row", dies_at_the_100th)
    with pytest.raises(KeyboardInterrupt):
        catalog.resolve("irds:beir/scifact/test", cache)
    assert list((cache / "irds").iterdir()) == []  # no final folder, no staging left behind
    monkeypatch.setattr(irds, "doc_row", real)
    collection = catalog.resolve("irds:beir/scifact/test", cache)
    assert json.loads(Path(collection.root, "manifest.json").read_text())["counts"]["documents"] == \
        len(bundled_rows("corpus.jsonl"))


def test_without_the_data_offline_the_error_names_the_id_and_how_to_get_it(offline: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError) as info:
        catalog.resolve("irds:beir/scifact/test", cache)
    message = str(info.value)
    assert "'beir/scifact/test'" in message and "IR_DATASETS_HOME" in message and str(offline) in message
    assert "ir_datasets export beir/scifact/test docs" in message
    assert info.value.dataset_id == "beir/scifact/test"
    assert list((cache / "irds").iterdir()) == []


def test_unknown_ids_are_clear_errors(offline: Path, tmp_path: Path):
    with pytest.raises(CollectionError, match="unknown ir_datasets id 'beir/nope'"):
        catalog.resolve("irds:beir/nope", tmp_path)
    with pytest.raises(CollectionError, match="names no ir_datasets id"):
        catalog.resolve("irds:", tmp_path)


def test_bm25_index_and_retrieve_read_the_materialised_collection(ray_session, scifact_home: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]):
    """The index and retrieve verbs take the irds: spec like any other; the Lucene index holds every document
    ir_datasets served and the run answers every query of the split."""
    from inpars_ray import cli
    from inpars_ray.io import trec

    cache, index, run = tmp_path / "cache", tmp_path / "index", tmp_path / "run.trec"
    spec = ["--dataset", "irds:beir/scifact/test", "--cache-dir", str(cache)]
    assert cli.main(["index", *spec, "--index-dir", str(index)]) == 0
    assert json.loads((index / "manifest.json").read_text())["counts"]["documents"] == len(bundled_rows("corpus.jsonl"))
    assert cli.main(["retrieve", *spec, "--index-dir", str(index), "--out", str(run), "--k", "10"]) == 0
    capsys.readouterr()
    hits = trec.read_trec_run(run)
    test_qids = {line.split("\t")[0] for line in (BUNDLED / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    assert set(hits.column("query_id").to_pylist()) == test_qids
    assert set(hits.column("doc_id").to_pylist()) <= {d["_id"] for d in bundled_rows("corpus.jsonl")}
