"""Fixtures of the reliability tier: every test here is marked ``reliability``.

The tier injects real faults into real components (a local Ray, the loopback GCS emulator, a loopback
OpenAI-style endpoint) and compares against an unfaulted run; nothing is mocked, and no test sleeps to
synchronise: each polls a condition with a deadline (:func:`wait_for`).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

#: run the long variants too (more examples, more kill points)
FULL = os.environ.get("INPARS_RAY_RELIABILITY_FULL", "").strip().lower() in ("1", "true", "yes")

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.reliability)


def wait_for(condition: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy (returned), or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)  # a poll interval, not a synchronisation: the condition decides
