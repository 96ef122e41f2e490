"""The dashboard's view cache: the last computed value of each view, recomputed in the background.

A view over millions of responses (a report) takes seconds; a page must load in well under one.
So a request gets the last value at once, and a value older than its time-to-live is recomputed
by a background thread while the old one is still served. Only a view never computed makes its
first request wait, at most ``wait_s``; after that the page is told it is being computed and asks
again. A computation that fails keeps its error as the value (the route maps it), so a broken
view does not recompute on every poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from evaluation.errors import EvaluationError
from feedback.errors import FlywheelError

log = logging.getLogger(__name__)

Compute = Callable[[], Any]
MAX_KEYS = 256  # values kept at most; the least recently asked for goes first (experiment ids come from URLs)


class ViewFailed(FlywheelError):
    """A view's computation failed unexpectedly (a storage error); the message says how."""


@dataclass(frozen=True)
class Cached:
    """A computed value, when it was computed (epoch seconds), and the error that replaced it, if any."""

    value: Any
    computed_at: float
    error: Exception | None = None

    @property
    def age_s(self) -> float:
        """Seconds since it was computed."""
        return max(time.time() - self.computed_at, 0.0)


class ViewCache:
    """Last values by key; stale ones are recomputed in the background by ``workers`` threads."""

    def __init__(self, workers: int = 2, max_keys: int = MAX_KEYS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dashboard")
        self._values: OrderedDict[Hashable, Cached] = OrderedDict()
        self._max_keys = max_keys
        self._running: dict[Hashable, Future[Cached]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, key: Hashable, compute: Compute, ttl_s: float, wait_s: float = 0.5) -> Cached | None:
        """The value of ``key`` (recomputed in the background once older than ``ttl_s``); None while first computed."""
        with self._lock:
            cached = self._values.get(key)
            if cached is not None:
                self._values.move_to_end(key)
            running = self._running.get(key)
            if running is None and (cached is None or cached.age_s >= ttl_s) and not self._closed:
                running = self._pool.submit(self._compute, key, compute)
                self._running[key] = running
        if cached is not None or running is None:
            return cached
        try:
            return running.result(timeout=wait_s)
        except FutureTimeout:
            return None

    def peek(self, key: Hashable) -> Cached | None:
        """The value of ``key`` if one was computed, whatever its age; starts nothing."""
        with self._lock:
            return self._values.get(key)

    def _compute(self, key: Hashable, compute: Compute) -> Cached:
        try:
            cached = Cached(compute(), time.time())
        except (FlywheelError, EvaluationError) as exc:  # an unknown experiment, an empty arm: the route says why
            cached = Cached(None, time.time(), exc)
        except Exception as exc:  # a background job must not die of it; the page shows it
            log.exception("dashboard view %r failed", key)
            cached = Cached(None, time.time(), ViewFailed(f"{type(exc).__name__}: {exc}"))
        with self._lock:
            self._values[key] = cached
            self._values.move_to_end(key)
            while len(self._values) > self._max_keys:
                self._values.popitem(last=False)
            self._running.pop(key, None)
        return cached

    def close(self) -> None:
        """Start nothing more and wait for what runs (the store closes after this)."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
