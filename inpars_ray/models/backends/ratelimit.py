"""Client-side flow control for remote generation endpoints: token buckets and retry back-off.

Hosted LLM APIs limit both requests per minute and tokens per minute, and answer 429 when either is
exceeded. A :class:`TokenBucket` per limit keeps a backend under them before the server has to refuse;
:func:`backoff_delay` decides how long to wait after a refusal (server's ``Retry-After`` first, else
exponential back-off with jitter, so that many actors that failed together do not retry together).

Both take their clock and sleep as arguments, so they are tested without waiting in real time.
"""
from __future__ import annotations

import dataclasses
import email.utils
import math
import random
import threading
import time
from collections.abc import Callable, Mapping

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


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a remote backend retries a failed request.

    Attributes:
        max_retries: retries after the first attempt before the prompt is given up (its row gets ``error``).
        base_delay_s: back-off before the first retry; doubles with every further retry.
        max_delay_s: ceiling of one back-off (also caps a server's ``Retry-After``).
        jitter: fraction of the back-off drawn at random (0 = none, 1 = "full jitter" between 0 and the delay).
        retry_statuses: HTTP statuses worth retrying (rate limited, server errors, request timeout).
    """

    max_retries: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: float = 0.5
    retry_statuses: tuple[int, ...] = (408, 409, 429, 500, 502, 503, 504)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ConfigError("retry delays must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError(f"jitter must lie in [0, 1], got {self.jitter}")


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds a server asked the client to wait, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be a number of seconds or an HTTP date (RFC 9110 section 10.2.3); ``now`` is the
    current Unix time used for the date form. Returns ``None`` when no usable header is present.
    """
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = lower.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def backoff_delay(
    attempt: int, policy: RetryPolicy, rng: random.Random, retry_after: float | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    A server's ``Retry-After`` wins (capped at ``max_delay_s``); otherwise the delay is
    ``base * 2**(attempt-1)`` capped at ``max_delay_s``, of which a ``jitter`` fraction is drawn uniformly.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    if retry_after is not None:
        return min(policy.max_delay_s, retry_after)
    ceiling = min(policy.max_delay_s, policy.base_delay_s * (2.0 ** (attempt - 1)))
    fixed = ceiling * (1.0 - policy.jitter)
    return fixed + rng.uniform(0.0, ceiling * policy.jitter)
