"""Two drivers, one run root: the run lease (inpars_ray/io/lease.py), locally and on gs:// (the emulator).

A second driver refuses with a typed error naming the holder, or waits for it with ``wait_s``; a lease of
a dead process on this host is broken by itself; ``--break-lease`` breaks any; the lease goes at the end.
``inpars-ray run`` takes it once Ray is up and the run root is found reachable, before anything is written.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from inpars_ray.errors import LeaseHeldError
from inpars_ray.io import artifacts, lease, storage


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    request.getfixturevalue("gcs_url")  # the session emulator, STORAGE_EMULATOR_HOST set
    return f"gs://inpars-runs/lease-{request.node.name.split('[')[0]}-{os.getpid()}-{id(tmp_path)}"


def _lease_of(root: str) -> dict | None:
    loc = storage.location(root).join(lease.LEASE_NAME)
    return loc.read_json() if loc.is_file() else None


def test_second_driver_is_refused_naming_the_holder_and_the_lease_goes_at_the_end(root):
    with lease.run_lease(root) as held:
        assert _lease_of(root)["token"] == held["token"]
        with pytest.raises(LeaseHeldError, match=f"pid {os.getpid()} on ") as err:
            with lease.run_lease(root):
                pytest.fail("two drivers held one run root")
        assert "--break-lease" in str(err.value) and err.value.root == storage.location(root).uri
        assert _lease_of(root)["token"] == held["token"]  # the refused driver left the lease alone
    assert _lease_of(root) is None
    assert lease.LEASE_NAME not in artifacts.snapshot(root)  # a dot name: never an artifact of a manifest
    with lease.run_lease(root):  # free again
        pass


def test_a_waiting_driver_gets_the_lease_when_the_holder_ends(root, monkeypatch):
    monkeypatch.setattr(lease, "POLL_S", 0.05)
    release, taken, order = threading.Event(), threading.Event(), []

    def holder():
        with lease.run_lease(root):
            taken.set()
            release.wait(60)
            order.append("first done")

    t = threading.Thread(target=holder)
    t.start()
    assert taken.wait(60)
    waiter = threading.Thread(target=lambda: [order.append("second starts"), release.set()])
    waiter.start()
    with lease.run_lease(root, wait_s=60):
        order.append("second holds")
    t.join(60)
    waiter.join(60)
    assert order[-2:] == ["first done", "second holds"]


def test_stale_lease_of_a_dead_process_is_broken_another_hosts_needs_break_lease(root):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    loc = storage.location(root).join(lease.LEASE_NAME)
    loc.write_text(json.dumps({**lease.holder_record("inpars-ray run"), "pid": dead.pid}))
    with lease.run_lease(root) as held:  # a SIGKILLed driver's lease: gone by itself
        assert _lease_of(root)["token"] == held["token"]

    loc.write_text(json.dumps({**lease.holder_record("inpars-ray run"), "host": "another-host", "pid": 1}))
    with pytest.raises(LeaseHeldError, match="pid 1 on another-host"):
        with lease.run_lease(root):
            pass
    with lease.run_lease(root, break_lease=True) as held:
        assert _lease_of(root)["token"] == held["token"]
    assert _lease_of(root) is None


def test_inpars_ray_run_refuses_a_run_root_in_use(root):
    env = {**os.environ, "INPARS_RAY_PROGRESS": "0", "RAY_ADDRESS": ""}
    with lease.run_lease(root):
        done = subprocess.run([sys.executable, "-m", "inpars_ray", "run", "--out-dir", root],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 2, done.stderr[-3000:]
        assert "in use by another inpars-ray run" in done.stderr and f"pid {os.getpid()}" in done.stderr
