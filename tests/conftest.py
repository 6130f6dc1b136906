"""Shared fixtures: a local Ray for the session and the bundled collection."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("INPARS_RAY_PROGRESS", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

BUNDLED = Path(__file__).resolve().parents[1] / "inpars_ray" / "data" / "collections" / "tiny-science"


def free_port() -> int:
    """A free loopback port outside 10000-19999, the range Ray keeps for its worker processes."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 10000 <= port <= 19999:
            return port


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray costs seconds)."""
    import ray

    from inpars_ray.runtime.raykit import ensure_ray

    for attempt in range(3):  # Ray gives a starting node 30 s to register, which a loaded machine can miss
        try:
            ensure_ray(num_cpus=2)
            break
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()
    yield ray
    ray.shutdown()


@pytest.fixture()
def bundled_copy(tmp_path: Path) -> Path:
    """A writable copy of the bundled collection."""
    dst = tmp_path / "tiny-science"
    shutil.copytree(BUNDLED, dst)
    return dst


@pytest.fixture(scope="session")
def gcs_url():
    """A GCS emulator for the session with a bucket ``inpars-runs``; ``STORAGE_EMULATOR_HOST`` points at it."""
    from tests.support.gcs import emulator_host, gcs_emulator

    with gcs_emulator(("inpars-runs",)) as url, emulator_host(url):
        yield url
