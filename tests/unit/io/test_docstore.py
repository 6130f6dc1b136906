"""The document store: ids in, rows out, in order; unknown and bad ids handled; bad corpora refused."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from inpars_ray.errors import FormatError
from inpars_ray.io import docstore as D
from inpars_ray.io.text import document_text


def _blocks(n: int, per_block: int = 700) -> list[pa.Table]:
    ids = [f"doc-{i}" for i in range(n)]
    return [pa.table({"doc_id": ids[s:s + per_block], "title": [f"T{i}" if i % 3 else "" for i in range(s, min(s + per_block, n))],
                      "text": [f" body {i} " for i in range(s, min(s + per_block, n))]})
            for s in range(0, n, per_block)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store")
    # corpus_bytes far above the bucket size: several buckets, so the external sort's merge is exercised
    manifest = D.build_store(_blocks(5000), path, corpus_bytes=8 * D.BUCKET_BYTES, source={"v": 1})
    assert manifest["bucket_bits"] == 3 and manifest["documents"] == 5000
    return D.DocStore(path)


def test_fetch_returns_rows_in_the_order_asked_with_repeats_and_unknown_ids(store):
    rng = np.random.default_rng(0)
    ids = [f"doc-{i}" for i in rng.integers(0, 5000, 3000)] + ["doc-17", "missing", None, "doc-17", ""]
    got = store.fetch(pa.array(ids, pa.string()))
    assert got.column("doc_id").to_pylist() == ids
    for doc_id, text in zip(ids, got.column("text").to_pylist()):
        if doc_id and doc_id.startswith("doc-"):
            assert text == f" body {doc_id[4:]} "
        else:
            assert text is None
    assert store.positions(["missing", None, ""]).tolist() == [-1, -1, -1]


def test_texts_match_the_per_row_document_text(store):
    ids = [f"doc-{i}" for i in range(0, 5000, 7)]
    rows = store.fetch(ids)
    expected = [document_text(t, x) for t, x in zip(rows.column("title").to_pylist(), rows.column("text").to_pylist())]
    assert store.texts(ids).to_pylist() == expected
    assert D.document_texts(pa.array(["  a ", "", None, None, "t"]), pa.array(["b", " c", None, "", None])).to_pylist() \
        == ["a b", "c", None, "", "t"]


def test_unknown_ids_raise_when_asked_to_with_the_id_named(store):
    with pytest.raises(D.DocStoreError, match=r"'nope' \(negative\)"):
        store.texts(["doc-1", "nope"], missing="raise", what="negative")
    with pytest.raises(D.DocStoreError, match="no column"):
        store.fetch(["doc-1"], columns=["body"])


def test_empty_lookups_and_an_empty_store(tmp_path, store):
    assert store.fetch([]).num_rows == 0
    D.build_store([], tmp_path / "empty")
    empty = D.DocStore(tmp_path / "empty")
    assert len(empty) == 0 and empty.fetch(["a"]).column("text").to_pylist() == [None]


def test_hash_collisions_are_resolved_by_the_id(tmp_path, monkeypatch):
    # every id hashes alike: lookups must fall back to comparing ids within the equal-hash run
    monkeypatch.setattr(D, "id_hashes", lambda ids: np.zeros(len(ids), dtype=np.uint64))
    D.build_store(_blocks(50, per_block=20), tmp_path / "s")
    store = D.DocStore(tmp_path / "s")
    ids = ["doc-49", "doc-0", "doc-23", "nope"]
    assert store.fetch(ids).column("text").to_pylist() == [" body 49 ", " body 0 ", " body 23 ", None]


def test_duplicate_and_null_ids_are_format_errors(tmp_path):
    dup = _blocks(10) + [pa.table({"doc_id": ["doc-3"], "title": [""], "text": ["again"]})]
    with pytest.raises(FormatError, match="duplicate document id 'doc-3'"):
        D.build_store(dup, tmp_path / "dup", display="corpus.jsonl")
    assert D.read_store_manifest(tmp_path / "dup") is None  # no manifest: never taken for a complete store
    with pytest.raises(FormatError, match="no id"):
        D.build_store([pa.table({"doc_id": pa.array([None], pa.string()), "title": [""], "text": ["x"]})],
                      tmp_path / "null")


def test_incomplete_or_damaged_stores_are_refused(tmp_path):
    with pytest.raises(D.DocStoreError, match="no complete document store"):
        D.DocStore(tmp_path)
    D.build_store(_blocks(30), tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / D.MANIFEST_FILE).read_text())
    (tmp_path / "s" / D.MANIFEST_FILE).write_text(json.dumps(dict(manifest, documents=31)))
    with pytest.raises(D.DocStoreError, match="damaged"):
        D.DocStore(tmp_path / "s")
    (tmp_path / "s" / D.MANIFEST_FILE).write_text(json.dumps(dict(manifest, format=99)))
    with pytest.raises(D.DocStoreError, match="format 99"):
        D.DocStore(tmp_path / "s")


def test_take_rows_takes_from_each_chunk_without_joining_the_column():
    """A column past 2 GiB of text (32-bit offsets) in chunks: ``ChunkedArray.take`` would join them and fail;
    a lookup takes from each chunk only the rows it needs, in the order asked, nulls for negatives."""
    big = pa.array(["x" * (1 << 20)] * 300)  # 300 MiB, repeated as 8 chunks: 2.4 GiB seen as one column
    column = pa.chunked_array([big] * 7 + [pa.array([f"last-{i}" for i in range(300)])])
    with pytest.raises(pa.ArrowInvalid):
        column.take(pa.array([0, 2100]))
    positions = np.array([2105, 0, -1, 299, 300, 2105, 2399])
    got = D.take_rows(column, positions)
    assert got.to_pylist()[0] == "last-5" and got[5].as_py() == "last-5" and got[6].as_py() == "last-299"
    assert got[2].as_py() is None and got.null_count == 1
    assert [len(got[i].as_py()) for i in (1, 3, 4)] == [1 << 20] * 3
    small = pa.chunked_array([pa.array(list("abc")), pa.array([]).cast(pa.string()), pa.array(list("de"))])
    assert D.take_rows(small, np.array([4, 0, 3, -1, 2])).to_pylist() == ["e", "a", "d", None, "c"]
    assert D.take_rows(small, np.array([-1, -1])).to_pylist() == [None, None]
