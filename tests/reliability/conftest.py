"""Fixtures of the reliability tier: every test here is marked ``reliability``.

The tier injects real faults into real components (a local Ray, the loopback GCS emulator, a loopback
OpenAI-style endpoint) and compares against an unfaulted run; nothing is mocked, and no test sleeps to
synchronise: each polls a condition with a deadline (:func:`wait_for`).
"""
from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from tests.fakes.fault_proxy import EchoCompletionsServer

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


class GatedEcho(EchoCompletionsServer):
    """The echo endpoint, counting answered completions per document; holds answers after ``open_for``, or
    from the first request that arrives when ``hold_if()`` is true, until :meth:`open` (so the test can
    kill an actor while its request is in flight)."""

    def __init__(self, open_for: int | None = None, hold_if: Callable[[], bool] | None = None) -> None:
        super().__init__(api_key=None)
        self.open_for, self.hold_if, self.arrived, self.holding = open_for, hold_if, 0, False
        self.answered: collections.Counter[str] = collections.Counter()
        self._gate, self._count = threading.Event(), threading.Lock()
        if open_for is None and hold_if is None:
            self._gate.set()

    def open(self) -> None:
        self._gate.set()

    def stop(self) -> None:
        self._gate.set()
        super().stop()

    def _complete(self, body: dict) -> dict:
        with self._count:
            self.arrived += 1
            self.holding = self.holding or (self.open_for is not None and self.arrived > self.open_for) or bool(
                self.hold_if is not None and not self._gate.is_set() and self.hold_if())
            hold = self.holding
        if hold:
            self._gate.wait(300)
        with self._count:
            self.answered[str(body["prompt"])[-400:]] += 1  # the document's passage ends the prompt
        return super()._complete(body)
