"""The Lucene index as a run artifact: built on a Ray worker, published under a gs:// run root (GCS emulator),
copied once per node into a verified cache by the searchers; and pyserini prebuilt indexes, fetched through
pyserini's own download and cache from a loopback HTTP server."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import tarfile
import threading
import uuid
from pathlib import Path

import pytest

from inpars_ray import errors
from inpars_ray.io import catalog, storage
from inpars_ray.io.load import read_queries
from inpars_ray.stages import index as index_mod
from inpars_ray.stages import lucene, prebuilt, retrieve
from tests.conftest import BUNDLED


def in_ray(env: dict[str, str], fn, *args):
    """Run ``fn(*args)`` in a Ray task whose environment (inherited by the tasks it starts) adds ``env``."""
    import ray

    return ray.get(ray.remote(fn).options(runtime_env={"env_vars": env}, num_cpus=0).remote(*args))


def materialise(where):
    return lucene._materialise(where)


def build(collection, where, config=index_mod.IndexConfig()):
    return index_mod.build_index(collection, where, config=config)


def search(where, queries):
    return retrieve.retrieve(where, queries, k=100)


@pytest.fixture(scope="module")
def local_run(ray_session, tmp_path_factory):
    """The bundled collection's index built in a local folder, and its run of 8 queries (the reference)."""
    collection = catalog.resolve(str(BUNDLED))
    index = tmp_path_factory.mktemp("local") / "index"
    index_mod.build_index(collection, index)
    queries = read_queries(collection)[0].slice(0, 8)
    return collection, index, queries, retrieve.retrieve(index, queries, k=100)


def test_gs_index_is_copied_once_per_node_and_verified(local_run, gcs_url, tmp_path: Path):
    import ray

    collection, _, queries, reference = local_run
    uri = f"gs://inpars-runs/{uuid.uuid4().hex[:8]}/index"
    builder_cache, node_cache = str(tmp_path / "builder-cache"), str(tmp_path / "node-cache")
    manifest = in_ray({"INPARS_RAY_INDEX_CACHE": builder_cache}, build, collection, storage.location(uri))
    loc = storage.location(uri)
    assert storage.read_json(f"{uri}/manifest.json")["files"] == manifest["files"] and manifest["status"] == "complete"
    assert set(manifest["files"]) == set(manifest["extra"]["checksums"]) | {lucene.BAD_ROWS_FILE}
    assert lucene.lucene_path(uri) == f"{uri}/{lucene.LUCENE_DIR}"

    # two actors of one node open the index at once: one downloads, the other waits for that copy
    fetch = ray.remote(num_cpus=0)(materialise)
    got = ray.get([fetch.options(runtime_env={"env_vars": {"INPARS_RAY_INDEX_CACHE": node_cache}}).remote(loc)
                   for _ in range(2)])
    assert sorted(downloaded for _, downloaded in got) == [False, True]
    assert got[0][0] == got[1][0] and Path(got[0][0]).parent == Path(node_cache)
    cached = Path(got[0][0])
    for name, digest in manifest["extra"]["checksums"].items():
        assert hashlib.sha256((cached / name.split("/", 1)[1]).read_bytes()).hexdigest() == digest
    assert [p.name for p in Path(node_cache).iterdir() if not p.name.endswith(".lock")] == [cached.name]
    # the node that built the index kept its copy: nothing to download there
    assert in_ray({"INPARS_RAY_INDEX_CACHE": builder_cache}, materialise, loc)[1] is False

    # the searchers on the gs:// index give the very run of the local index
    run = in_ray({"INPARS_RAY_INDEX_CACHE": node_cache}, search, loc, queries)
    assert run.equals(reference)

    # a published file changed behind the manifest's back is caught before any search uses it
    victim = sorted(manifest["extra"]["checksums"])[0]
    data = bytearray(loc.join(victim).read_bytes())
    data[-1] ^= 0xFF
    loc.join(victim).write_bytes(bytes(data))
    with pytest.raises(errors.IndexError_, match="sha256"):
        in_ray({"INPARS_RAY_INDEX_CACHE": str(tmp_path / "fresh-cache")}, materialise, loc)
    leftovers = [p for p in (tmp_path / "fresh-cache").iterdir() if p.is_dir()]
    assert not leftovers  # no unverified copy, under its final name or any other


class Files:
    """Serves a folder over HTTP on loopback (a thread of this process, stopped on exit)."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_prebuilt_index_comes_through_pyserinis_download_and_cache(local_run, tmp_path: Path):
    collection, index, queries, reference = local_run
    # a prebuilt-style tarball (one top folder of Lucene files, as pyserini's are) of an index this project built
    name, stem = "beir-v1.0.0-tiny-science.flat", "lucene-inverted.beir-v1.0.0-tiny-science.flat.test"
    served = tmp_path / "served"
    served.mkdir()
    tarball = served / f"{stem}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(index / lucene.LUCENE_DIR, arcname=stem)
    md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
    documents = json.loads((index / "manifest.json").read_text())["counts"]["documents"]
    env = {"PYSERINI_CACHE": str(tmp_path / "pyserini-cache")}
    with Files(served) as url:
        table = tmp_path / "mirror.json"
        table.write_text(json.dumps({name: {"urls": [f"{url}/{stem}.tar.gz"], "md5": md5, "documents": documents,
                                            "size compressed (bytes)": tarball.stat().st_size}}))
        config = index_mod.IndexConfig(prebuilt=name, prebuilt_table=str(table))
        manifest = in_ray(env, build, collection, str(tmp_path / "index"), config)
        assert manifest["extra"]["prebuilt"]["md5"] == md5 and manifest["counts"]["documents"] == documents
        assert lucene.lucene_path(tmp_path / "index") == f"pyserini:{name}"
        # pyserini unpacked it into its own cache, under its own naming (<file>.<md5>)
        assert (tmp_path / "pyserini-cache" / "indexes" / f"{stem}.{md5}").is_dir()
        run = in_ray(env, search, str(tmp_path / "index"), queries)
        assert run.equals(reference)
        assert in_ray(env, materialise, str(tmp_path / "index"))[1] is False  # cached: no second download

        # a table entry whose checksum does not match what the server sends is refused
        table.write_text(json.dumps({name: {"urls": [f"{url}/{stem}.tar.gz"], "md5": "0" * 32}}))
        with pytest.raises(errors.IndexError_, match="could not fetch prebuilt index"):
            in_ray({"PYSERINI_CACHE": str(tmp_path / "other-cache")}, build, collection, str(tmp_path / "index2"),
                   config)


def test_auto_prebuilt_names_exist_in_pyserinis_table():
    """``auto`` maps every default BEIR collection of the job to an index pyserini really lists."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "jobs"))
    from full_beir import DEFAULT_DATASETS, expand

    auto = index_mod.IndexConfig(prebuilt="auto")
    specs = DEFAULT_DATASETS + expand(DEFAULT_DATASETS)  # the job runs cqadupstack as its forums
    names = {spec: prebuilt.prebuilt_name(catalog.Collection(spec, "/nowhere", None), auto) for spec in specs}
    assert names["beir/scifact"] == "beir-v1.0.0-scifact.flat" and names["beir/cqadupstack"] is None
    assert names["beir/cqadupstack/android"] == "beir-v1.0.0-cqadupstack-android.flat"
    for spec, name in names.items():
        if name:
            assert prebuilt.pyserini_table_entry(name)["md5"], spec
    assert prebuilt.prebuilt_name(catalog.resolve(str(BUNDLED)), auto) is None  # not a BEIR download: build it
