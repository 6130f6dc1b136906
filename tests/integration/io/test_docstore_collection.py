"""ensure_store on a real collection through Ray: every good corpus row stored, reused until the corpus changes."""
from __future__ import annotations

import json
import os

import pytest

from inpars_ray.io import docstore as D
from inpars_ray.io.catalog import resolve
from inpars_ray.io.load import LoadConfig


def test_store_of_a_collection_is_built_reused_and_rebuilt_on_change(ray_session, bundled_copy, tmp_path):
    corpus = bundled_copy / "corpus.jsonl"
    docs = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
    collection = resolve(str(bundled_copy))
    path = D.ensure_store(collection, LoadConfig(), tmp_path / "store")
    store = D.open_store(path)
    assert len(store) == len(docs)
    got = store.fetch([d["_id"] for d in docs])
    assert got.column("text").to_pylist() == [d["text"] for d in docs]
    built = (path / D.MANIFEST_FILE).stat().st_mtime_ns
    assert D.ensure_store(collection, LoadConfig(), path) == path
    assert (path / D.MANIFEST_FILE).stat().st_mtime_ns == built  # unchanged corpus: reused as it is

    with corpus.open("a") as fh:  # a changed corpus: rebuilt, and the new document is found
        fh.write(json.dumps({"_id": "added-doc", "title": "", "text": "a late addition"}) + "\n")
    os.utime(corpus)
    D.ensure_store(collection, LoadConfig(), path)
    assert D.open_store(path).texts(["added-doc"]).to_pylist() == ["a late addition"]


def test_a_corpus_with_a_repeated_id_is_refused(ray_session, bundled_copy, tmp_path):
    corpus = bundled_copy / "corpus.jsonl"
    first = corpus.read_text().splitlines()[0]
    with corpus.open("a") as fh:
        fh.write(first + "\n")
    with pytest.raises(Exception, match="duplicate document id"):
        D.ensure_store(resolve(str(bundled_copy)), LoadConfig(), tmp_path / "store")
    assert not (tmp_path / "store").exists() and not list(tmp_path.glob(".store.*"))
