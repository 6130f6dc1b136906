"""The harness itself: two nodes, no shared disk, every task on the worker node."""
from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.cluster

PROBE = r"""
import pathlib, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
runs = pathlib.Path(sys.argv[2])
@ray.remote
def write():
    (runs / "from-task.txt").write_text("worker")
    return ray.get_runtime_context().get_node_id()
node = ray.get(write.remote())
head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) == 0]
print(node not in head, (runs / "from-task.txt").exists())
"""


def test_tasks_run_on_the_worker_node_whose_disk_the_driver_cannot_see(two_nodes):
    out = two_nodes.run([sys.executable, "-c", PROBE, two_nodes.address, str(two_nodes.runs)], timeout=300)
    assert out.stdout.split()[-2:] == ["True", "False"]
    assert (two_nodes.worker_disk / "from-task.txt").read_text() == "worker"
    assert not (two_nodes.head_disk / "from-task.txt").exists()
