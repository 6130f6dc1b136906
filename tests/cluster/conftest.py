"""The two-node cluster fixture (see harness.py); tests using it are marked ``cluster``."""
from __future__ import annotations

import pytest

from tests.cluster.harness import TwoNodeCluster, two_node_cluster, unshare_problem


@pytest.fixture(scope="session")
def two_nodes(gcs_url, tmp_path_factory) -> TwoNodeCluster:
    """A two-node Ray cluster whose nodes share no disk, with ``gs://inpars-runs`` on an emulator."""
    problem = unshare_problem()
    if problem:
        pytest.skip(f"two-node cluster unavailable: {problem}")
    with two_node_cluster(tmp_path_factory.mktemp("two-nodes"), gcs_url) as cluster:
        yield cluster
