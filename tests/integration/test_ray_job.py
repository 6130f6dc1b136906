"""`ray job submit -- python jobs/full_beir.py` against a Ray head started by this test on loopback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture()
def ray_head(tmp_path: Path):
    ports: set[int] = set()
    while len(ports) < 7:
        ports.add(free_port())
    gcs, dash, agent, agent_grpc, client, metrics, runtime_env = sorted(ports)
    # a short temp dir: Ray puts Unix sockets in it and pytest's tmp paths exceed the socket path limit
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # Ray 2.60 enables token auth by default; this throw-away loopback head runs without it
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp}",
         # every port of its own: the test session's Ray already holds Ray's default agent ports
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={runtime_env}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 300
    while True:  # poll the job API until it answers
        try:
            urllib.request.urlopen(f"{url}/api/jobs/", timeout=2)
            break
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                head.kill()
                pytest.fail("the Ray head did not come up")
            time.sleep(0.5)
    yield url, env
    head.terminate()  # --block: SIGTERM stops the head and the processes it started
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, 9)
    shutil.rmtree(temp, ignore_errors=True)


def test_full_beir_job_runs_through_ray_job_submit(ray_head, tmp_path: Path):
    url, env = ray_head
    out = tmp_path / "runs"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", url, "--", str(BIN / "python"),
           str(ROOT / "jobs" / "full_beir.py"), "--datasets", "bundled/tiny-science", "--out-dir", str(out), "--bm25-only"]
    deadline = time.monotonic() + 300
    while True:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        log = proc.stdout + proc.stderr
        # the job API can answer before the head's job agent accepts jobs: retry only a refused submission
        if proc.returncode == 0 or "submitted successfully" in log or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert proc.returncode == 0, log[-4000:]
    assert "succeeded" in log
    summary = json.loads((out / "summary.json").read_text())
    assert [r["dataset"] for r in summary] == ["bundled/tiny-science"]
    assert 0.0 < summary[0]["bm25_ndcg@10"] <= 1.0
    manifest = json.loads((out / "tiny-science" / "manifest.json").read_text())
    assert manifest["stage"] == "pipeline" and manifest["status"] == "complete"
