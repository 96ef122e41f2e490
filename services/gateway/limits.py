"""Per-key request limits: a token-bucket rate and a cap on requests in flight.

Each key (an API key's id) has a bucket of ``burst`` tokens, refilled at ``rate_per_s`` tokens a
second. A request takes one token; with none left it is refused with the seconds until one is back,
rounded up (the 429's ``Retry-After``). A key may also have at most ``max_in_flight`` requests
running; one more is refused at once (``Retry-After`` of one second: a running request will end).

The limits hold per gateway process. With N replicas behind a balancer that spreads one key's
requests over all of them, a key gets up to N times each limit; set the per-replica limits to the
global ones divided by N, or route by key (the README's operations notes say more).

Memory stays bounded: idle keys whose bucket is full carry no state and are forgotten when more
than ``max_keys`` are tracked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Limited(Exception):
    """A request over a key's limit: why, and when to try again (whole seconds, at least 1)."""

    reason: str  # "rate" or "concurrency"
    retry_after_s: int


@dataclass
class _KeyState:
    tokens: float
    updated: float
    in_flight: int = 0


class KeyLimits:
    """Admission by key: ``with limits.admit(key): ...`` runs the request or raises :class:`Limited`."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_in_flight: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self._rate, self._burst, self._max_in_flight = rate_per_s, float(burst), max_in_flight
        self._clock, self._max_keys = clock, max_keys
        self._keys: dict[str, _KeyState] = {}

    @contextmanager
    def admit(self, key: str) -> Iterator[None]:
        """Hold one of ``key``'s requests for the duration of the block."""
        release = self.take(key)
        try:
            yield
        finally:
            release()

    def take(self, key: str, *, hold: bool = True) -> Callable[[], None]:
        """Admit one of ``key``'s requests (or raise :class:`Limited`); call the result once it ended.

        For a request whose end is not a block's (a stream ends after its route returned). Calling
        the release again does nothing. With ``hold=False`` the request only spends a token: it is
        not refused for the key's requests in flight and holds no slot (its release does nothing).
        """
        state = self._take(key, hold)
        released = not hold

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.in_flight -= 1

        return release

    def in_flight(self, key: str) -> int:
        """Requests of ``key`` running now."""
        state = self._keys.get(key)
        return state.in_flight if state else 0

    def _take(self, key: str, hold: bool) -> _KeyState:
        now = self._clock()
        state = self._keys.get(key)
        if state is None:
            self._forget_idle(now)
            state = self._keys[key] = _KeyState(self._burst, now)
        state.tokens = min(self._burst, state.tokens + (now - state.updated) * self._rate)
        state.updated = now
        if hold and state.in_flight >= self._max_in_flight:
            raise Limited("concurrency", 1)
        if state.tokens < 1.0:
            raise Limited("rate", max(1, math.ceil((1.0 - state.tokens) / self._rate)))
        state.tokens -= 1.0
        state.in_flight += hold
        return state

    def _forget_idle(self, now: float) -> None:
        if len(self._keys) < self._max_keys:
            return
        for key, state in list(self._keys.items()):
            refilled = state.tokens + (now - state.updated) * self._rate >= self._burst
            if state.in_flight == 0 and refilled:
                del self._keys[key]
