"""gs:// collections, read in place through pyarrow, against a GCS emulator on loopback."""
from __future__ import annotations

from pathlib import Path

import pytest

from inpars_ray.io import catalog
from inpars_ray.io.load import read_qrels, read_queries
from inpars_ray.stages import index, retrieve
from tests.conftest import BUNDLED
from tests.support.gcs import emulator_host
from tests.support.gcs import gcs_emulator as emulator


@pytest.fixture(scope="module")
def gcs_emulator():
    """The shared loopback emulator (tests/support/gcs.py) holding a copy of the bundled collection."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with emulator(buckets=("inpars-test",)) as url, emulator_host(url):
        bucket = storage.Client(project="test", credentials=AnonymousCredentials()).bucket("inpars-test")
        for path in sorted(BUNDLED.rglob("*")):
            if path.is_file():
                bucket.blob(f"tiny/{path.relative_to(BUNDLED)}").upload_from_filename(str(path))
        yield url


def test_gs_collection_reads_and_indexes_in_place(gcs_emulator, ray_session, tmp_path: Path):
    collection = catalog.resolve("gs://inpars-test/tiny")
    collection.check_layout("test")
    queries, _ = read_queries(collection)
    qrels, _ = read_qrels(collection, "test", queries)
    local = catalog.resolve(str(BUNDLED))
    assert queries.equals(read_queries(local)[0]) and qrels.equals(read_qrels(local, "test")[0])
    manifest = index.build_index(collection, tmp_path / "index")
    assert manifest["counts"]["documents"] == len((BUNDLED / "corpus.jsonl").read_text().splitlines())
    run = retrieve.retrieve(tmp_path / "index", queries.slice(0, 5), k=10)
    assert set(run.column("query_id").to_pylist()) <= set(queries.column("query_id").to_pylist()[:5])
    assert run.num_rows > 0


def test_missing_gs_files_are_named(gcs_emulator):
    with pytest.raises(catalog.CollectionError, match="gs://inpars-test/nothing/corpus.jsonl"):
        catalog.resolve("gs://inpars-test/nothing").check_layout()
