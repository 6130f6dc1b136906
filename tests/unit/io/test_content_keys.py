"""Content keys (a stage config's hash, an upstream manifest's hash) must keep their values: a changed key
reruns every stage of an existing run folder. The expected values were computed by the hash functions before
``config_hash`` and ``manifest_hash`` became one."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from inpars_ray.io import manifest as manifest_module
from inpars_ray.io.manifest import StageRecord, config_hash, input_key, published


@dataclasses.dataclass(frozen=True)
class _Config:
    k: int = 3
    name: str = "x"
    path: Path = Path("/a/b")


MANIFEST = {"stage": "filter", "status": "complete", "config": {"k": 1, "m": _Config()},
            "files": {"kept/part-0.parquet": 123}, "counts": {"kept": 2}, "w": 0.5, "t": (1, 2)}


def test_the_hash_of_a_fixed_input_is_unchanged():
    assert config_hash(MANIFEST) == "b49ddf68c861bd57"
    assert config_hash(_Config()) == "b617ac800c21e1f9"
    assert config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1}) == "94a786c3662bc7be"
    assert not hasattr(manifest_module, "manifest_hash")  # one content-key function, under one name


def test_an_upstream_output_is_keyed_by_its_manifest_hash(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "part-0.parquet").write_bytes(b"x" * 10)
    manifest = StageRecord("filter", {"k": 1}).write(tmp_path, files={"kept/part-0.parquet": 10})
    key = config_hash(manifest)
    assert input_key(tmp_path, stage="filter") == key
    files, published_key = published(tmp_path, "filter", "kept")
    assert published_key == key and [f.name for f in files] == ["part-0.parquet"]
    assert config_hash({**manifest, "counts": {"kept": 3}}) != key  # a stage that wrote anew has a new key
