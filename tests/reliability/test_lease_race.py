"""Two drivers, one gs:// run root, at the same moment (issue 19): the race the emulator cannot show.

gcp-storage-emulator ignores generation preconditions, so against it the run lease (inpars_ray/io/lease.py)
is kept only by a "lease exists" check made before the create-only upload; two drivers passing that check
together would both "hold" the root. Here a proxy that enforces the preconditions as Cloud Storage does
(tests/fakes/gcs_preconditions.py) sits in front of the emulator, holds the drivers' existence checks until
both have arrived, so both go on to upload, and counts what it answers: exactly one upload wins, the other
gets the 412, and its driver names the holder (or waits for it). Deletes are conditioned on the generation,
so a driver whose lease was broken and retaken cannot release the newcomer's, and of two drivers breaking one
stale lease only one removes it. The drivers are separate processes (tests/reliability/lease_driver.py).
"""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import requests

from inpars_ray.errors import StorageError
from inpars_ray.io import lease, storage
from tests.fakes.gcs_preconditions import GcsPreconditionProxy
from tests.reliability.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
#: generous: a driver process imports pyarrow and google-cloud-storage on a loaded machine
START_S = 120


@pytest.fixture()
def proxy(gcs_url):
    with GcsPreconditionProxy(gcs_url) as p:
        yield p


@pytest.fixture()
def root() -> str:
    return f"gs://inpars-runs/race-{uuid.uuid4().hex[:8]}"


def _object(root: str) -> str:
    """The lease's object name in the bucket."""
    return storage.location(root).join(lease.LEASE_NAME).path.partition("/")[2]


def _lease_of(proxy: GcsPreconditionProxy, root: str) -> dict | None:
    """The lease as stored, read straight from the emulator behind ``proxy`` (not with pyarrow: its
    GcsFileSystem holds the GIL while it reads, so it cannot read through a proxy serving in this process)."""
    bucket, _, name = storage.location(root).join(lease.LEASE_NAME).path.partition("/")
    url = (f"http://{proxy.upstream_host}:{proxy.upstream_port}/download/storage/v1/b/{bucket}/o/"
           f"{urllib.parse.quote(name, safe='')}?alt=media")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


class Driver:
    """One ``lease_driver`` process whose ``STORAGE_EMULATOR_HOST`` is the proxy; its stdout events are
    collected by a thread as they arrive."""

    def __init__(self, root: str, proxy_url: str, *options: str) -> None:
        env = {**os.environ, "STORAGE_EMULATOR_HOST": proxy_url, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.lease_driver", root, *options],
                                     cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self, stream, is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.events.append(json.loads(line))
            else:
                self.stderr.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def event(self, name: str) -> dict | None:
        """The event ``name`` once it came; fails the test if the driver ended in an error."""
        found = next((e for e in self.events if e["event"] == name), None)
        if found is None and self.proc.poll() not in (None, 0):
            pytest.fail(f"driver {self.pid} failed (exit {self.proc.returncode}):\n{''.join(self.stderr)[-3000:]}")
        return found

    def outcome(self) -> dict | None:
        """``held`` or ``refused``, whichever came (None while neither has)."""
        return self.event("held") or self.event("refused")

    def release(self) -> None:
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()

    def wait(self, timeout_s: float = 60) -> int:
        code = self.proc.wait(timeout_s)
        for t in self._readers:
            t.join(timeout_s)
        return code

    def stop(self) -> None:
        """End the driver: stdin closed lets it release and exit; killed (by its pid) if it does not."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@pytest.fixture()
def drivers(proxy):
    started: list[Driver] = []

    def start(root: str, *options: str) -> Driver:
        started.append(Driver(root, proxy.url, *options))
        return started[-1]

    yield start
    for d in started:
        d.stop()


def _both_started_together(proxy: GcsPreconditionProxy, name: str) -> None:
    """Both drivers' existence checks were held until both had arrived, and both found no lease."""
    assert proxy.held[("metadata", name)] == 2 and not proxy.barrier_timeouts, (proxy.held, proxy.barrier_timeouts)
    assert proxy.statuses("metadata", name)[:2] == [404, 404]


def test_two_drivers_at_the_same_moment_one_holds_the_other_is_refused_naming_it(proxy, drivers, root):
    name = _object(root)
    proxy.hold("metadata", name, parties=2, timeout_s=START_S)
    pair = [drivers(root), drivers(root)]
    wait_for(lambda: all(d.outcome() for d in pair), START_S, "both drivers to hold or be refused")
    held = [d for d in pair if d.event("held")]
    refused = [d for d in pair if d.event("refused")]
    assert len(held) == 1 and len(refused) == 1, [d.events for d in pair]
    winner, loser = held[0], refused[0]
    _both_started_together(proxy, name)
    # the race was decided by the create-only precondition: one upload written, the other answered 412
    assert proxy.statuses("upload", name) == [200, 412] and proxy.refused[("upload", name)] == 1
    assert loser.event("refused")["holder"].startswith(f"pid {winner.pid} on {socket.gethostname()} ")
    assert "--break-lease" in loser.event("refused")["message"]
    assert _lease_of(proxy, root)["token"] == winner.event("held")["token"]
    assert loser.wait() == 0
    winner.release()
    wait_for(lambda: winner.event("released"), 60, "the holder to release the lease")
    assert winner.wait() == 0
    assert _lease_of(proxy, root) is None


def test_two_drivers_at_the_same_moment_the_waiting_one_takes_the_lease_after_the_holder(proxy, drivers, root):
    name = _object(root)
    proxy.hold("metadata", name, parties=2, timeout_s=START_S)
    pair = [drivers(root, "--wait-s", "120", "--poll-s", "0.2") for _ in range(2)]
    winner = wait_for(lambda: next((d for d in pair if d.event("held")), None), START_S, "one driver to hold")
    waiter = pair[1] if winner is pair[0] else pair[0]
    _both_started_together(proxy, name)
    assert proxy.statuses("upload", name) == [200, 412]
    looks = len(proxy.statuses("metadata", name))
    wait_for(lambda: len(proxy.statuses("metadata", name)) >= looks + 4, 60, "the waiting driver to look again")
    assert waiter.event("held") is None  # still waiting while the other holds the lease
    winner.release()
    wait_for(lambda: waiter.event("held"), 60, "the waiting driver to take the lease")
    assert _lease_of(proxy, root)["token"] == waiter.event("held")["token"]
    waiter.release()
    assert winner.wait() == 0 and waiter.wait() == 0
    # every write the store accepted, in order: never two leases at once
    accepted = [kind for kind, n, status in proxy.answers if n == name and kind in ("upload", "delete")
                and status < 300]
    assert accepted == ["upload", "delete", "upload", "delete"]
    assert _lease_of(proxy, root) is None


def test_two_drivers_breaking_one_stale_lease_only_one_removes_it_and_holds(proxy, drivers, root):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    loc = storage.location(root).join(lease.LEASE_NAME)
    loc.write_text(json.dumps({**lease.holder_record("inpars-ray run"), "pid": dead.pid}))  # a SIGKILLed driver's
    name = _object(root)
    proxy.hold("download", name, parties=2, timeout_s=START_S)  # both read the stale lease before either acts
    pair = [drivers(root), drivers(root)]
    wait_for(lambda: all(d.outcome() for d in pair), START_S, "both drivers to hold or be refused")
    held = [d for d in pair if d.event("held")]
    assert len(held) == 1, [d.events for d in pair]
    winner = held[0]
    loser = pair[1] if winner is pair[0] else pair[0]
    assert loser.event("refused")["holder"].startswith(f"pid {winner.pid} on ")
    assert proxy.held[("download", name)] == 2 and not proxy.barrier_timeouts
    # both judged the dead driver's lease stale and deleted that generation: one delete removed it; the
    # other found it gone (404) or, if the winner had written its own by then, was refused by the
    # precondition (412) instead of removing the winner's lease
    deletes = proxy.statuses("delete", name)
    assert len(deletes) == 2 and sum(s < 300 for s in deletes) == 1 and {404, 412} & set(deletes), deletes
    assert _lease_of(proxy, root)["token"] == winner.event("held")["token"]
    winner.release()
    assert winner.wait() == 0 and loser.wait() == 0
    assert _lease_of(proxy, root) is None


# -- one driver in this process, through the proxy ---------------------------------------------------------


@pytest.fixture()
def via_proxy(proxy, monkeypatch) -> GcsPreconditionProxy:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    return proxy


def test_release_does_not_delete_the_lease_of_a_driver_that_broke_and_retook_it(via_proxy, root, caplog):
    name = _object(root)
    first = lease.run_lease(root)
    mine = first.__enter__()
    # meanwhile the user, believing this run gone, starts another with --break-lease: it takes the root
    second = lease.run_lease(root, break_lease=True)
    theirs = second.__enter__()
    assert _lease_of(via_proxy, root)["token"] == theirs["token"] != mine["token"]
    with caplog.at_level(logging.WARNING, logger="inpars_ray.io.lease"):
        first.__exit__(None, None, None)  # the first run ends and gives back "its" lease
    # its delete was conditioned on the generation it wrote, gone since: refused, the newcomer's lease stays
    assert [s < 300 for s in via_proxy.statuses("delete", name)] == [True, False]
    assert via_proxy.refused[("delete", name)] == 1
    assert _lease_of(via_proxy, root)["token"] == theirs["token"]
    assert "no longer ours" in caplog.text
    second.__exit__(None, None, None)
    assert _lease_of(via_proxy, root) is None


def test_an_upload_whose_answer_was_lost_is_retried_and_the_lease_is_ours(via_proxy, root):
    name = _object(root)
    via_proxy.inject("upload", name, drop_response=True)  # written, but the driver never hears of it
    with lease.run_lease(root) as held:
        # the client sent it again; the precondition refused the retry (the lease is there: its own)
        assert via_proxy.statuses("upload", name) == [200, 412]
        assert _lease_of(via_proxy, root)["token"] == held["token"]
    assert _lease_of(via_proxy, root) is None  # released with the generation the first attempt was given


def test_storage_errors_end_in_a_typed_error_naming_the_lease(via_proxy, root, monkeypatch):
    name = _object(root)
    via_proxy.inject("upload", name, status=503)  # once: retried
    with lease.run_lease(root):
        assert via_proxy.statuses("upload", name) == [503, 200]
    monkeypatch.setenv(storage.STORAGE_RETRY_ENV, "2")
    via_proxy.inject("upload", name, status=503, times=1000)  # an outage outlasting the retries
    with pytest.raises(StorageError, match=f"{lease.LEASE_NAME}: could not take the run lease") as err, \
            lease.run_lease(root):
        pytest.fail("took a lease during an outage")
    assert type(err.value) is StorageError
    via_proxy.inject("upload", name, status=403)  # not retried
    with pytest.raises(StorageError, match="403"), lease.run_lease(root):
        pass
    assert _lease_of(via_proxy, root) is None


def test_the_proxy_enforces_generation_preconditions_as_cloud_storage_does(via_proxy):
    """The proxy itself, on each upload type google-cloud-storage sends, and on deletes (its emulator alone
    accepts every one of these writes)."""
    from google.api_core.exceptions import PreconditionFailed
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    bucket = gcs.Client(project="test", credentials=AnonymousCredentials()).bucket("inpars-runs")
    prefix = f"proxy-{uuid.uuid4().hex[:8]}"
    small, big = bucket.blob(f"{prefix}/small"), bucket.blob(f"{prefix}/big", chunk_size=256 * 1024)
    small.upload_from_string(b"first", if_generation_match=0)  # multipart: up to 8 MiB
    big.upload_from_file(io.BytesIO(b"x" * 300_000), if_generation_match=0)  # no size given: resumable
    for blob, upload in ((small, lambda b: b.upload_from_string(b"again", if_generation_match=0)),
                         (big, lambda b: b.upload_from_file(io.BytesIO(b"y" * 300_000), if_generation_match=0))):
        with pytest.raises(PreconditionFailed):
            upload(bucket.blob(blob.name, chunk_size=256 * 1024))
    # two resumable sessions opened while the object is absent: only the first to complete writes it
    sessions = [bucket.blob(f"{prefix}/session").create_resumable_upload_session(if_generation_match=0)
                for _ in range(2)]
    statuses = [requests.put(url, data=body, headers={"Content-Range": f"bytes 0-{len(body) - 1}/{len(body)}"},
                             timeout=30).status_code for url, body in zip(sessions, (b"one", b"two"), strict=True)]
    assert statuses == [200, 412] and bucket.blob(f"{prefix}/session").download_as_bytes() == b"one"
    with pytest.raises(PreconditionFailed):
        bucket.blob(small.name).delete(if_generation_match=small.generation + 1)
    bucket.blob(small.name).upload_from_string(b"second", if_generation_match=small.generation)  # it matches
    assert bucket.blob(small.name).download_as_bytes() == b"second"
    assert via_proxy.refused[("upload", small.name)] == 1 and via_proxy.refused[("upload", big.name)] == 1
    assert via_proxy.refused[("delete", small.name)] == 1
