"""Per-key limits with a fake clock: the token bucket, the in-flight cap, Retry-After, bounded memory."""

from __future__ import annotations

import pytest

from services.gateway.limits import KeyLimits, Limited


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_burst_then_waits_for_the_refill() -> None:
    clock = FakeClock()
    limits = KeyLimits(rate_per_s=2.0, burst=3, max_in_flight=10, clock=clock)
    for _ in range(3):
        with limits.admit("k1"):
            pass
    with pytest.raises(Limited) as refused, limits.admit("k1"):
        pass
    assert refused.value == Limited("rate", 1)  # one token needs 0.5 s: rounded up to 1
    clock.now += 0.5
    with limits.admit("k1"):
        pass
    with limits.admit("k2"):  # another key has its own bucket
        pass


def test_retry_after_is_the_whole_seconds_until_a_token_is_back() -> None:
    clock = FakeClock()
    limits = KeyLimits(rate_per_s=0.25, burst=1, max_in_flight=10, clock=clock)
    with limits.admit("k"):
        pass
    clock.now += 1.0  # a quarter of a token back: three more quarters take 3 s
    with pytest.raises(Limited) as refused, limits.admit("k"):
        pass
    assert refused.value.retry_after_s == 3


def test_requests_in_flight_are_capped_and_released_even_on_error() -> None:
    limits = KeyLimits(rate_per_s=100.0, burst=100, max_in_flight=2, clock=FakeClock())
    with limits.admit("k"), limits.admit("k"):
        assert limits.in_flight("k") == 2
        with pytest.raises(Limited) as refused, limits.admit("k"):
            pass
        assert refused.value == Limited("concurrency", 1)
    with pytest.raises(RuntimeError), limits.admit("k"):
        raise RuntimeError("the request failed")
    assert limits.in_flight("k") == 0


def test_a_refused_request_takes_no_token() -> None:
    clock = FakeClock()
    limits = KeyLimits(rate_per_s=1.0, burst=1, max_in_flight=1, clock=clock)
    with limits.admit("k"), pytest.raises(Limited), limits.admit("k"):  # refused for concurrency
        pass
    clock.now += 1.0
    with limits.admit("k"):  # the bucket refilled to exactly one token
        pass


def test_idle_keys_are_forgotten_beyond_max_keys() -> None:
    clock = FakeClock()
    limits = KeyLimits(rate_per_s=1.0, burst=2, max_in_flight=1, clock=clock, max_keys=2)
    with limits.admit("a"):
        pass
    with limits.admit("b"):
        pass
    clock.now += 1.0  # both buckets full again: no state worth keeping
    with limits.admit("c"):
        pass
    assert limits._keys.keys() == {"c"}
