"""A GCS emulator on loopback (gcp-storage-emulator), started and stopped by pid."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port


@contextlib.contextmanager
def gcs_emulator(buckets: tuple[str, ...] = ()) -> Iterator[str]:
    """Start the emulator in memory on a free loopback port, create ``buckets``; yield its URL.

    The caller decides where the URL goes (``STORAGE_EMULATOR_HOST`` of this process or of others).
    """
    port = free_port()
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    proc = subprocess.Popen([str(exe), "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # poll until the emulator answers (or give up at the deadline)
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b?project=test", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the GCS emulator did not start") from None
                time.sleep(0.2)
        for name in buckets:
            req = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                         data=f'{{"name": "{name}"}}'.encode(),
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=10).read()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@contextlib.contextmanager
def emulator_host(url: str) -> Iterator[str]:
    """``STORAGE_EMULATOR_HOST`` pointing at ``url`` inside the block, as it was after it."""
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        yield url
    finally:
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old
