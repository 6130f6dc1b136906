"""Storage faults on a gs:// run root (the GCS emulator on loopback) and damaged local artifacts.

* **Outage**: the emulator is stopped while ``inpars-ray generate`` (openai backend, loopback endpoint)
  is mid-stage. The command must end with a typed storage error within a bounded time (the retry
  deadline ``INPARS_RAY_STORAGE_RETRY_S``, 5 s here; pyarrow's own default is 15 minutes per call). The
  emulator is restarted on the same port over the same on-disk data; the rerun resumes and its rows
  equal an unfaulted run's, and no document is requested from the endpoint twice: the answer that arrived
  during the outage (its part could not be written) is taken from the node's journal of answers.
* **Damage**: a part file a complete manifest lists is truncated or deleted. The rerun sees the stage
  as not complete (the manifest's sizes), regenerates exactly the documents of that part and ends equal
  to the unfaulted output.

The endpoint holds its answers at a gate the test opens, so "mid-stage" is a state the test waits for
(polling with a deadline), never a guess about timing.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inpars_ray.io import storage
from tests.conftest import free_port
from tests.reliability.conftest import GatedEcho, wait_for

NUM_DOCS = 8
RETRY_S = 5.0


class DiskEmulator:
    """gcp-storage-emulator on a fixed loopback port, storing on disk under ``root`` so that a restart
    on the same port finds the same buckets and objects."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = Path(sys.executable).with_name("gcp-storage-emulator")
        self.proc = subprocess.Popen([str(exe), "start", "--host=127.0.0.1", f"--port={self.port}", "-q"],
                                     cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

        def answers() -> bool:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=2)
                return True
            except OSError:
                assert self.proc.poll() is None, "the GCS emulator exited"
                return False

        wait_for(answers, 60, "the GCS emulator to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # an outage, not a shutdown
            self.proc.wait(30)
        self.proc = None

    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                     data=f'{{"name": "{name}"}}'.encode(), headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture()
def emulator():
    root = Path(tempfile.mkdtemp(prefix="inpars-gcs-"))
    emu = DiskEmulator(root)
    emu.start()
    emu.create_bucket("runs")
    try:
        yield emu
    finally:
        emu.stop()
        shutil.rmtree(root, ignore_errors=True)


def _command(out: str, endpoint: str) -> list[str]:
    return [sys.executable, "-m", "inpars_ray", "generate", "--dataset", "bundled/tiny-science", "--backend", "openai",
            "--model", "echo", "--prompt", "inpars", "--num-docs", str(NUM_DOCS), "--out", out, "--num-cpus", "2",
            "--batch-size", "1", "--backend-option", f"base_url={endpoint}/v1",
            "--backend-option", "api_key_env=null"]


def _env(emulator_url: str | None = None) -> dict[str, str]:
    env = {**os.environ, "INPARS_RAY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "",
           "INPARS_RAY_STORAGE_RETRY_S": str(RETRY_S)}
    if emulator_url:
        env["STORAGE_EMULATOR_HOST"] = emulator_url
    return env


def _rows(out: str, emulator_url: str | None = None) -> list[dict]:
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator_url:
        os.environ["STORAGE_EMULATOR_HOST"] = emulator_url
    try:
        parts = storage.location(out).join("parts")
        rows = []
        for name in parts.files(suffix=".parquet"):
            with parts.join(name).open_input() as fh:
                rows += pq.read_table(fh).to_pylist()
        return sorted(rows, key=lambda r: r["doc_id"])
    finally:
        if emulator_url:
            if old is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = old


def _same(rows: list[dict], reference: list[dict]) -> None:
    keys = ("doc_id", "query_id", "query", "error", "num_tokens")
    assert [{k: r[k] for k in keys} for r in rows] == [{k: r[k] for k in keys} for r in reference]


@pytest.fixture(scope="module")
def endpoint():
    """One endpoint for the module: its URL is part of the generate config, so a rerun must use the same."""
    with GatedEcho() as server:
        yield server


@pytest.fixture(scope="module")
def reference(tmp_path_factory, endpoint):
    """The unfaulted output (a local run root: the same rows wherever they are stored)."""
    out = tmp_path_factory.mktemp("reference") / "gen"
    before = endpoint.requests["/v1/completions"]
    done = subprocess.run(_command(str(out), endpoint.url), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert endpoint.requests["/v1/completions"] - before == NUM_DOCS
    return out, _rows(str(out))


def test_storage_outage_fails_in_bounded_time_and_the_rerun_resumes(emulator, reference):
    out = "gs://runs/outage/gen"
    parts = storage.location(out).join("parts").path
    with GatedEcho(open_for=2) as server:  # one endpoint for both runs: its URL is part of the config
        proc = subprocess.Popen(_command(out, server.url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=_env(emulator.url), start_new_session=True)
        try:
            def some_parts() -> list[str]:
                assert proc.poll() is None, "the command ended before the outage"
                os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
                try:
                    return storage.Location(storage.gcs_filesystem(), parts, "gs").files()
                finally:
                    os.environ.pop("STORAGE_EMULATOR_HOST", None)

            before = wait_for(some_parts, 300, "the first parts on gs://")
            wait_for(lambda: server.arrived > 2, 300, "a request held at the endpoint")
            emulator.stop()  # the bucket stops answering mid-stage, while a request is in flight
            stopped = time.monotonic()
            server.open()  # the held answers arrive, and their parts cannot be written
            stderr = proc.communicate(timeout=300)[1]
            took = time.monotonic() - stopped
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        first_requests = server.requests["/v1/completions"]
        assert proc.returncode != 0
        assert "could not" in stderr and "INPARS_RAY_STORAGE_RETRY_S" in stderr, stderr[-3000:]
        assert took < 20 * RETRY_S, f"the stage took {took:.0f}s to fail after the outage"

        emulator.start()  # the same port, the same data on disk
        survived = len(_rows(out, emulator.url))  # documents whose part was stored before the outage
        assert survived >= len(before)
        done = subprocess.run(_command(out, server.url), capture_output=True, text=True, env=_env(emulator.url),
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        rerun_requests = server.requests["/v1/completions"] - first_requests
        paid_twice = sorted(p for p, c in server.answered.items() if c > 1)
    _same(_rows(out, emulator.url), reference[1])
    # no document is paid twice: those stored before the outage are skipped, and those answered during it
    # (their part could not be written) are taken from the node's journal of answers
    assert not paid_twice and rerun_requests == NUM_DOCS - first_requests, (paid_twice, rerun_requests)
    assert first_requests > survived  # an answer did arrive during the outage: the journal's case
    print(f"outage: failed {took:.1f}s after the stop; {survived} documents stored, "
          f"{first_requests - survived} answered during the outage and journaled, {rerun_requests} requested by "
          f"the rerun, {len(paid_twice)} paid twice")


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_part_is_detected_and_only_its_documents_are_redone(reference, endpoint, tmp_path, damage):
    ref_dir, ref_rows = reference
    out = tmp_path / "gen"
    shutil.copytree(ref_dir, out)
    parts = sorted((out / "parts").glob("part-*.parquet"))
    victim = parts[len(parts) // 2]
    lost = pq.read_table(victim).num_rows
    if damage == "truncate":
        with victim.open("r+b") as fh:
            fh.truncate(victim.stat().st_size // 2)
    else:
        victim.unlink()
    before = endpoint.requests["/v1/completions"]
    done = subprocess.run(_command(str(out), endpoint.url), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert endpoint.requests["/v1/completions"] - before == lost  # only the damaged part's documents, once each
    assert "damaged" in (tmp_path / "logs" / "inpars-ray.log").read_text() or damage == "delete"
    _same(_rows(str(out)), ref_rows)


def test_damage_that_keeps_the_size_is_caught_on_read_and_only_that_part_is_redone(reference, endpoint, tmp_path):
    """One byte of a listed part flipped (same size, footer intact): the manifest's sizes cannot see it.
    The next stage's read fails that part's page checksum, exits 2 naming it and marks generate's
    manifest damaged; the generate rerun regenerates exactly that part's documents; filter then completes
    on rows equal to the unfaulted run's."""
    from tests.unit.io.test_damage import flip_a_data_byte

    ref_dir, ref_rows = reference
    out = tmp_path / "gen"
    shutil.copytree(ref_dir, out)
    victim = sorted((out / "parts").glob("part-*.parquet"))[0]
    lost = pq.read_table(victim).num_rows
    size = victim.stat().st_size
    flip_a_data_byte(victim)
    assert victim.stat().st_size == size
    filter_cmd = [sys.executable, "-m", "inpars_ray", "filter", "--queries", str(out), "--dataset",
                  "bundled/tiny-science", "--out", str(tmp_path / "filter"), "--num-cpus", "2", "--keep-top-k", "4"]
    failed = subprocess.run(filter_cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert victim.name in failed.stderr and "damaged" in failed.stderr, failed.stderr[-3000:]
    assert json.loads((out / "manifest.json").read_text())["status"] == "damaged"

    before = endpoint.requests["/v1/completions"]
    done = subprocess.run(_command(str(out), endpoint.url), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert endpoint.requests["/v1/completions"] - before == lost  # only the damaged part's documents, once each
    _same(_rows(str(out)), ref_rows)
    done = subprocess.run(filter_cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ref_filter = [*filter_cmd[:5], str(ref_dir), *filter_cmd[6:]]
    ref_filter[ref_filter.index("--out") + 1] = str(tmp_path / "filter-ref")
    done = subprocess.run(ref_filter, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    kept = [pq.read_table(tmp_path / d / "kept").sort_by("query_id") for d in ("filter", "filter-ref")]
    assert kept[0].num_rows > 0 and kept[0].select(["query_id", "query"]).equals(kept[1].select(["query_id", "query"]))
