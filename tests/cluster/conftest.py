"""The two-node cluster fixture (see harness.py); tests using it are marked ``cluster``."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.cluster.harness import TwoNodeCluster, two_node_cluster, unshare_problem


@pytest.fixture(scope="session")
def two_nodes(gcs_url) -> TwoNodeCluster:
    """A two-node Ray cluster whose nodes share no disk, with ``gs://inpars-runs`` on an emulator."""
    problem = unshare_problem()
    if problem:
        pytest.skip(f"two-node cluster unavailable: {problem}")
    # not under pytest's basetemp: other pytest sessions on this machine rotate those folders away, and the
    # nodes' disks must outlive every test that uses them
    base = Path(tempfile.mkdtemp(prefix="inpars-two-nodes-"))
    try:
        with two_node_cluster(base, gcs_url) as cluster:
            yield cluster
    finally:
        shutil.rmtree(base, ignore_errors=True)
