"""ensure_ray never waits on a stale record of a killed ``ray start`` cluster (issue #8.7)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import logging, ray
logging.basicConfig(level=logging.INFO)
from inpars_ray.runtime.ray_private import recorded_cluster
from inpars_ray.runtime.raykit import ensure_ray
# the record is in place: a bare ray.init() would try to join this address
print("RECORDED", recorded_cluster())
ensure_ray(num_cpus=1)
print("CPUS", ray.cluster_resources()["CPU"])
ray.shutdown()
"""


def test_stale_cluster_record_is_not_joined():
    temp = tempfile.mkdtemp(prefix="rk-", dir="/tmp")  # short: Ray puts Unix sockets under it
    try:
        port = free_port()
        stale = f"127.0.0.1:{port}"  # nothing listens there: the cluster was killed
        (Path(temp) / "ray").mkdir()
        (Path(temp) / "ray" / "ray_current_cluster").write_text(stale)
        env = {**os.environ, "RAY_TMPDIR": temp, "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS", None)
        # the timeout only guards the suite; the old behaviour waited on the stale GCS far longer
        proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split("RECORDED ")[1].split()[0] == stale
        assert "CPUS 1.0" in proc.stdout
        assert f"not joining the Ray cluster recorded at {stale}" in proc.stderr
    finally:
        shutil.rmtree(temp, ignore_errors=True)


QUIET_SCRIPT = """
import sys, time, ray
from inpars_ray.runtime import progress
from inpars_ray.runtime.raykit import ensure_ray
progress.configure(verbose=sys.argv[2] == "verbose")
ensure_ray(num_cpus=1)
progress.attach_log(sys.argv[1])

@ray.remote
def shout():
    print("WORKER-SAYS-HELLO", flush=True)

ray.get(shout.remote())
time.sleep(3)  # Ray's log monitor forwards a worker's output within about a second when it forwards it
ray.shutdown()
progress.restore()
"""


def test_a_quiet_command_keeps_worker_output_off_the_console_and_names_where_it_is(tmp_path):
    """Quiet: ``ray.init(log_to_driver=False)``, the worker's line is in Ray's session logs, which the run's
    log file names, and on neither stream of the command; verbose (the control): it reaches the console."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    runs = {}
    for mode in ("quiet", "verbose"):
        log = tmp_path / mode / "inpars-ray.log"
        proc = subprocess.run([sys.executable, "-c", QUIET_SCRIPT, str(log), mode], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[mode] = (proc.stdout + proc.stderr, log.read_text())
    console, text = runs["quiet"]
    assert "WORKER-SAYS-HELLO" not in console
    logs = Path(text.split("Ray's own logs (the output of its workers and actors): ")[1].split()[0])
    assert any("WORKER-SAYS-HELLO" in p.read_text(errors="replace") for p in logs.glob("worker-*.out"))
    assert "WORKER-SAYS-HELLO" in runs["verbose"][0]
