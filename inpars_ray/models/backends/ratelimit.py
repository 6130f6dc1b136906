"""Client-side flow control for remote generation endpoints: token buckets.

Hosted LLM APIs limit both requests per minute and tokens per minute, and answer 429 when either is
exceeded. A :class:`TokenBucket` per limit keeps a backend under them before the server has to refuse;
what to do after a refusal (back-off, ``Retry-After``) is the openai client's own retry logic.

A bucket takes its clock and sleep as arguments, so it is tested without waiting in real time.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from inpars_ray.errors import ConfigError

_EPS = 1e-9


class TokenBucket:
    """A thread-safe token bucket refilled continuously at ``per_minute / 60`` tokens per second.

    ``acquire(n)`` blocks until ``n`` tokens are available and takes them. A request larger than the
    bucket's capacity is let through once the bucket is full (and drives the level negative), so an
    oversized request is slowed down, never deadlocked.
    """

    def __init__(
        self,
        per_minute: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not per_minute > 0:
            raise ConfigError(f"a rate limit must be positive, got {per_minute} per minute")
        self.rate = per_minute / 60.0
        self.capacity = float(capacity) if capacity is not None else float(per_minute)
        if not self.capacity > 0:
            raise ConfigError(f"a bucket capacity must be positive, got {capacity}")
        self._clock = clock
        self._sleep = sleep
        self._level = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()
        #: total seconds callers spent waiting in :meth:`acquire`
        self.waited_s = 0.0

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, n: float) -> float:
        """Seconds until ``n`` tokens could be taken (0 when they can be taken now)."""
        with self._lock:
            self._refill()
            return self._wait_locked(n)

    def _wait_locked(self, n: float) -> float:
        need = min(n, self.capacity)
        # tolerance: after sleeping exactly the computed delay, float rounding may leave the level a
        # hair short of ``need``; without it the caller would spin on ever smaller sleeps
        if self._level >= need - _EPS * max(1.0, need):
            return 0.0
        return (need - self._level) / self.rate

    def try_acquire(self, n: float) -> bool:
        """Take ``n`` tokens if available now; never blocks."""
        with self._lock:
            self._refill()
            if self._wait_locked(n) > 0:
                return False
            self._level -= n
            return True

    def acquire(self, n: float = 1.0) -> float:
        """Block until ``n`` tokens are available, take them, and return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                delay = self._wait_locked(n)
                if delay <= 0:
                    self._level -= n
                    self.waited_s += waited
                    return waited
            # sleep outside the lock so other threads can refill/check meanwhile
            self._sleep(delay)
            waited += delay
