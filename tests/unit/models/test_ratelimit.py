"""Token buckets, on a simulated clock (nothing waits in real time)."""
from __future__ import annotations

import threading

import pytest

from inpars_ray.errors import ConfigError
from inpars_ray.models.backends.ratelimit import TokenBucket


class FakeClock:
    """A clock whose ``sleep`` advances time instantly; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, s: float) -> None:
        with self._lock:
            self.sleeps.append(s)
            self.now += s


def test_bucket_allows_a_burst_up_to_capacity_then_throttles_to_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(per_minute=60, capacity=5, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(5):
        assert bucket.acquire(1) == 0.0
    # the next 10 must be spread at 1 per second
    for _ in range(10):
        bucket.acquire(1)
    assert clock.now - start == pytest.approx(10.0)
    assert bucket.waited_s == pytest.approx(10.0)


def test_bucket_never_exceeds_the_rate_over_a_long_run():
    clock = FakeClock()
    bucket = TokenBucket(per_minute=600, capacity=20, clock=clock, sleep=clock.sleep)
    start = clock.now
    taken = 0
    for n in [1, 7, 3, 20, 5] * 40:
        bucket.acquire(n)
        taken += n
        elapsed = clock.now - start
        # never more than capacity + rate * elapsed tokens in any prefix of the run
        assert taken <= 20 + 10.0 * elapsed + 1e-9


def test_oversized_request_waits_for_a_full_bucket_instead_of_deadlocking():
    clock = FakeClock()
    bucket = TokenBucket(per_minute=60, capacity=10, clock=clock, sleep=clock.sleep)
    bucket.acquire(10)
    waited = bucket.acquire(25)  # more than capacity: needs a full bucket (10 s), then goes negative
    assert waited == pytest.approx(10.0)
    assert not bucket.try_acquire(1)
    assert bucket.wait_time(1) == pytest.approx(16.0)  # level is -15: 16 tokens to refill


def test_try_acquire_does_not_block():
    clock = FakeClock()
    bucket = TokenBucket(per_minute=60, capacity=2, clock=clock, sleep=clock.sleep)
    assert bucket.try_acquire(2)
    assert not bucket.try_acquire(1)
    clock.now += 1.0
    assert bucket.try_acquire(1)
    assert clock.sleeps == []


def test_bucket_is_consistent_under_threads():
    clock = FakeClock()
    bucket = TokenBucket(per_minute=6000, capacity=50, clock=clock, sleep=clock.sleep)
    start = clock.now

    def work() -> None:
        for _ in range(50):
            bucket.acquire(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 400 tokens at 100/s with 50 up front: at least 3.5 s of simulated time had to pass
    assert clock.now - start >= 3.5 - 1e-9


@pytest.mark.parametrize("bad", [0, -5])
def test_bucket_rejects_non_positive_rates(bad):
    with pytest.raises(ConfigError):
        TokenBucket(per_minute=bad)
