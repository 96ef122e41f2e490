"""The dashboard's view cache: last values served at once, stale ones recomputed in the background."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from pipeline_events import wait_until

from evaluation.errors import UnknownExperimentError
from services.worker.dashboard.cache import ViewCache, ViewFailed


@pytest.fixture
def cache() -> Iterator[ViewCache]:
    views = ViewCache()
    yield views
    views.close()


def test_a_fresh_value_is_computed_once(cache: ViewCache) -> None:
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    values = [getattr(cache.get("k", compute, ttl_s=60), "value", None) for _ in range(3)]
    assert (values, len(calls)) == ([1, 1, 1], 1)


def test_a_stale_value_is_served_while_it_is_recomputed(cache: ViewCache) -> None:
    release = threading.Event()
    values = iter(["old", "new"])

    def compute() -> str:
        value = next(values)
        if value == "new":
            release.wait(30)
        return value

    first = cache.get("k", compute, ttl_s=0)
    assert first is not None
    assert first.value == "old"
    stale = cache.get("k", compute, ttl_s=0)  # starts the recomputation, which waits for the release
    assert stale is not None
    assert stale.value == "old"
    release.set()
    wait_until(lambda: getattr(cache.peek("k"), "value", None) == "new", what="the recomputed value")


def test_a_slow_first_computation_answers_none_then_the_value(cache: ViewCache) -> None:
    release = threading.Event()

    def slow() -> str:
        release.wait(30)
        return "done"

    assert cache.get("k", slow, ttl_s=60, wait_s=0.05) is None
    release.set()
    wait_until(lambda: cache.peek("k") is not None, what="the value")
    done = cache.get("k", slow, ttl_s=60)
    assert done is not None
    assert done.value == "done"


def test_errors_are_kept_as_values(cache: ViewCache) -> None:
    def unknown() -> None:
        raise UnknownExperimentError("no experiment 'x'")

    def broken() -> None:
        raise RuntimeError("disk gone")

    known = cache.get("a", unknown, ttl_s=60)
    failed = cache.get("b", broken, ttl_s=60)
    assert known is not None
    assert isinstance(known.error, UnknownExperimentError)
    assert failed is not None
    assert isinstance(failed.error, ViewFailed)
    assert str(failed.error) == "RuntimeError: disk gone"


def test_the_least_recently_asked_value_goes_first() -> None:
    small = ViewCache(max_keys=2)
    try:
        for key in ("a", "b", "a", "c"):  # "b" is the least recently asked for when "c" comes
            small.get(key, lambda key=key: key, ttl_s=60)
        assert [small.peek(key) is not None for key in ("a", "b", "c")] == [True, False, True]
    finally:
        small.close()
