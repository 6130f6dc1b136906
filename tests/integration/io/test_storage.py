"""The storage layer on a local folder and on gs:// (GCS emulator): the same behaviour on both."""
from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inpars_ray.errors import StorageError
from inpars_ray.io import artifacts, storage


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path: Path) -> storage.Location:
    if request.param == "local":
        return storage.location(tmp_path / "root")
    request.getfixturevalue("gcs_url")
    return storage.location(f"gs://inpars-runs/t-{uuid.uuid4().hex[:8]}")


def test_round_trips_and_listing(root: storage.Location, tmp_path: Path):
    assert not root.exists() and root.files() == []
    root.join("a", "x.json").write_json({"k": 1})
    root.join("a", "b", "y.txt").write_text("hé\n")
    root.join("z.bin").write_bytes(b"\x00\x01")
    assert root.join("a", "x.json").read_json() == {"k": 1}
    assert storage.read_text(storage.join(root, "a/b/y.txt")) == "hé\n"
    assert root.files() == ["a/b/y.txt", "a/x.json", "z.bin"]
    assert root.join("a").files(recursive=False) == ["x.json"]
    assert root.join("a").is_dir() and root.join("z.bin").is_file() and not root.join("nope").exists()
    with root.join("t.parquet").open_output() as fh:
        pq.write_table(pa.table({"x": [1, 2]}), fh)
    with root.join("t.parquet").open_input() as fh:
        assert pq.read_table(fh).column("x").to_pylist() == [1, 2]
    # folders travel both ways; the downloaded copy is whole
    local = tmp_path / "src"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "f.txt").write_text("1")
    (local / "g.txt").write_text("2")
    assert artifacts.upload_dir(local, root.join("up")) == ["g.txt", "sub/f.txt"]
    back = artifacts.download_dir(root.join("up"), tmp_path / "back")
    assert (back / "sub" / "f.txt").read_text() == "1" and (back / "g.txt").read_text() == "2"
    root.join("a").delete()
    assert root.files() == ["t.parquet", "up/g.txt", "up/sub/f.txt", "z.bin"]
    with pytest.raises(StorageError, match="does not exist"):
        root.join("a", "x.json").read_bytes()


def test_a_failed_write_leaves_nothing(root: storage.Location):
    target = root.join("half.bin")
    with pytest.raises(RuntimeError):
        with target.open_output() as fh:
            fh.write(b"partial")
            raise RuntimeError("writer died")
    assert not target.exists() and root.files() == []


def test_readers_take_only_what_the_manifest_lists(root: storage.Location):
    root.join("parts", "p-1.parquet").write_bytes(b"one")
    root.join("parts", "p-2.parquet").write_bytes(b"two")
    manifest = {"files": artifacts.snapshot(root, "parts")}
    root.join("parts", "p-stray.parquet").write_bytes(b"a killed attempt's part")
    assert [f.name for f in artifacts.listed_files(root, manifest, "parts")] == ["p-1.parquet", "p-2.parquet"]
    assert artifacts.remove_unlisted(root, manifest, "parts") == 1
    root.join("parts", "p-2.parquet").write_bytes(b"changed")
    with pytest.raises(StorageError, match="missing or changed"):
        artifacts.listed_files(root, manifest, "parts")


def test_uris_are_never_taken_for_local_folders(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError, match="lost a slash"):
        storage.location(str(Path("gs://bucket/runs/x")))  # pathlib collapses // into /
    assert storage.location("gs://bucket/runs/x/").uri == "gs://bucket/runs/x"
    assert storage.location("rel/dir").uri == str(tmp_path / "rel" / "dir")
    assert not list(tmp_path.iterdir())


def test_published_folders_materialise_once_per_node(root: storage.Location, tmp_path: Path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"w" * 100)
    manifest = artifacts.publish_dir(src, root.join("model"), {"stage": "train", "status": "complete"})
    assert manifest["files"] == {"config.json": 2, "sub/w.bin": 100}
    assert root.join("model", "manifest.json").read_json() == manifest
    cache = tmp_path / "cache"
    local = artifacts.materialize(root.join("model"), manifest["files"], cache_dir=cache)
    assert (local / "sub" / "w.bin").read_bytes() == b"w" * 100
    if root.is_local:
        assert local == Path(root.join("model").path)  # a local artifact is used in place
    else:
        assert local.parent == cache and artifacts.materialize(root.join("model"), manifest["files"],
                                                             cache_dir=cache) == local
        (local / "sub" / "w.bin").write_bytes(b"torn")  # a damaged copy is replaced, never used
        assert (artifacts.materialize(root.join("model"), manifest["files"], cache_dir=cache)
                / "sub" / "w.bin").read_bytes() == b"w" * 100
