"""The private Ray code inpars-ray still calls (runtime/ray_private.py), checked so that a Ray upgrade that
moves or changes it fails here, loudly, instead of silently dropping what it feeds."""
from __future__ import annotations

import inspect

import pytest

from inpars_ray.runtime.ray_private import recorded_cluster

pytest.importorskip("ray")


def test_read_ray_address_is_where_and_what_we_expect():
    from ray._private import utils

    assert callable(getattr(utils, "read_ray_address", None)), "ray._private.utils.read_ray_address is gone"
    params = inspect.signature(utils.read_ray_address).parameters
    assert list(params) == ["temp_dir"] and params["temp_dir"].default is None


def test_recorded_cluster_reads_the_record_ray_start_leaves(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert recorded_cluster() is None  # no record: nothing to mention
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.1.2.3:6379\n")
    assert recorded_cluster() == "10.1.2.3:6379"
