"""beir/cqadupstack/<forum>: CQADupStack's zip unpacks into one BEIR-layout folder per forum; the catalog
resolves a forum to its folder (against a local HTTP server serving a small zip of that layout)."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from inpars_ray.errors import CollectionError
from inpars_ray.io import catalog
from inpars_ray.io.load import read_qrels, read_queries
from tests.conftest import BUNDLED
from tests.integration.io.test_download import Server


def cqadupstack_zip() -> bytes:
    """``cqadupstack/<forum>/{corpus.jsonl,queries.jsonl,qrels/test.tsv}`` for the 12 forums; each forum keeps
    a different number of the bundled queries, so a wrong folder shows."""
    queries = {json.loads(line)["_id"]: line for line in (BUNDLED / "queries.jsonl").read_text().splitlines(True)}
    header, *qrels = (BUNDLED / "qrels" / "test.tsv").read_text().splitlines(keepends=True)
    test_qids = list(dict.fromkeys(r.split("\t")[0] for r in qrels))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, forum in enumerate(catalog.CQADUPSTACK_FORUMS, 1):
            kept = test_qids[:n + 10]
            zf.writestr(f"cqadupstack/{forum}/corpus.jsonl", (BUNDLED / "corpus.jsonl").read_bytes())
            zf.writestr(f"cqadupstack/{forum}/queries.jsonl", "".join(queries[q] for q in kept))
            zf.writestr(f"cqadupstack/{forum}/qrels/test.tsv", header + "".join(r for r in qrels if r.split("\t")[0] in kept))
    return buf.getvalue()


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch):
    blob = cqadupstack_zip()
    monkeypatch.setitem(catalog.BEIR_MD5, "cqadupstack", hashlib.md5(blob).hexdigest())  # the fake's own md5
    with Server(blob) as server:
        monkeypatch.setenv("INPARS_RAY_BEIR_URL", server.url)
        yield server


def test_a_forum_resolves_to_its_folder_of_the_one_download(served: Server, tmp_path: Path):
    android = catalog.resolve("beir/cqadupstack/android", cache_dir=tmp_path)
    assert Path(android.root) == tmp_path / "cqadupstack" / "android"
    android.check_layout("test")
    assert read_queries(android)[0].num_rows == 11
    wordpress = catalog.resolve("beir/cqadupstack/wordpress/", cache_dir=tmp_path)
    assert Path(wordpress.root) == tmp_path / "cqadupstack" / "wordpress"
    queries = read_queries(wordpress)[0]
    assert queries.num_rows == 22 and read_qrels(wordpress, "test", queries)[0].num_rows > 0
    assert served.requests == [None]  # one download serves every forum
    assert sorted(p.name for p in (tmp_path / "cqadupstack").iterdir() if p.is_dir()) == \
        sorted(catalog.CQADUPSTACK_FORUMS)


def test_cqadupstack_without_a_forum_names_the_forums_before_downloading(served: Server, tmp_path: Path):
    with pytest.raises(CollectionError, match="beir/cqadupstack/<forum>.*android, english, gaming"):
        catalog.resolve("beir/cqadupstack", cache_dir=tmp_path)
    with pytest.raises(CollectionError, match="one of android"):
        catalog.resolve("beir/cqadupstack/cooking", cache_dir=tmp_path)
    with pytest.raises(CollectionError, match="only beir/cqadupstack has sub-collections"):
        catalog.resolve("beir/scifact/test", cache_dir=tmp_path)
    assert served.requests == []


def test_licensed_collections_say_to_pass_a_folder(tmp_path: Path):
    with pytest.raises(CollectionError, match="robust04.* need licences: build them locally and pass the folder"):
        catalog.resolve("beir/robust04", cache_dir=tmp_path)
