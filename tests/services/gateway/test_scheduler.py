"""The continuous-batching scheduler with a fake step engine: joining, leaving, served first, shedding, 429s."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pytest

from feedback.model.batch import BatchRow
from feedback.model.runtime import Generation, SamplingParams
from feedback.settings import GatewaySettings
from services.gateway.metrics import GatewayMetrics
from services.gateway.scheduler import BatchScheduler, Overloaded, ShadowShed

T = TypeVar("T")


class FakeStepEngine:
    """A row of prompt length n needs n steps (its first in the step it joins); answers with n.

    ``steps`` records the prompt lengths in each step: running rows, then newcomers. With
    ``gated``, each step waits until the test allows it; a row with adapter ``bad`` fails its step,
    and so does the step numbered ``fail_at`` (from 1).
    """

    def __init__(self, *, gated: bool = False, fail_at: int = 0) -> None:
        self.steps: list[list[int]] = []
        self.fail_at = fail_at
        self._rows: list[BatchRow] = []
        self._gate = threading.Semaphore(0)
        self._gated = gated

    def allow(self, steps: int) -> None:
        for _ in range(steps):
            self._gate.release()

    def step(self, newcomers: Sequence[BatchRow] = ()) -> list[BatchRow]:
        if self._gated:
            self._gate.acquire(timeout=10)
        finished = [self._finish(row) for row in self._rows if row.cancelled]
        self._rows = [row for row in self._rows if not row.done]
        self.steps.append([len(row.prompt_ids) for row in (*self._rows, *newcomers)])
        if len(self.steps) == self.fail_at or any(row.adapter == "bad" for row in (*self._rows, *newcomers)):
            self._rows = []
            raise RuntimeError("adapter exploded")
        self._rows += newcomers
        for row in self._rows:
            row.ids.append(0)
            if len(row.ids) >= len(row.prompt_ids):
                finished.append(self._finish(row))
        self._rows = [row for row in self._rows if not row.done]
        return finished

    def reset(self) -> list[BatchRow]:
        dropped, self._rows = self._rows, []
        return dropped

    @staticmethod
    def _finish(row: BatchRow) -> BatchRow:
        row.done = True
        n = len(row.prompt_ids)
        row.result = Generation(str(n), n, len(row.ids), "stop", 1.0, tuple(0.0 for _ in row.ids))
        if row.on_done is not None:
            row.on_done(row.result)
        return row


def row(n: int, adapter: str = "__base__") -> BatchRow:
    return BatchRow(list(range(n)), SamplingParams(max_tokens=64), adapter=adapter)


def run_with(
    settings: GatewaySettings,
    engine: FakeStepEngine,
    body: Callable[[BatchScheduler], Awaitable[T]],
    shadow_idle_s: float = 0.1,
) -> T:
    async def main() -> T:
        scheduler = BatchScheduler(engine, settings, GatewayMetrics(), shadow_idle_s=shadow_idle_s)
        scheduler.start()
        try:
            return await body(scheduler)
        finally:
            engine.allow(1000)  # never leave the step thread waiting
            await scheduler.close()

    return asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def gather_list(*aws: Awaitable[Generation]) -> list[Generation]:
    return list(await asyncio.gather(*aws))


def texts(results: Sequence[object]) -> list[str | None]:
    return [getattr(r, "text", None) for r in results]


def test_served_requests_go_first_and_shadow_copies_wait_for_spare_capacity() -> None:
    engine = FakeStepEngine()

    async def body(scheduler: BatchScheduler) -> list[Generation]:
        return await gather_list(
            scheduler.submit(row(1), "shadow"), scheduler.submit(row(2), "served"), scheduler.submit(row(3), "served")
        )

    results = run_with(GatewaySettings(batch_wait_ms=20), engine, body)
    assert texts(results) == ["1", "2", "3"]
    assert engine.steps == [[2, 3], [2, 3], [3], [1]]


def test_shadow_copies_wait_while_served_traffic_only_pauses() -> None:
    engine = FakeStepEngine()

    async def body(scheduler: BatchScheduler) -> list[str]:
        shadow = asyncio.ensure_future(scheduler.submit(row(1), "shadow"))
        first = await scheduler.submit(row(2), "served")
        second = await scheduler.submit(row(3), "served")  # sent at once, as a busy client does
        return [first.text, second.text, (await shadow).text]

    assert run_with(GatewaySettings(batch_wait_ms=20), engine, body, shadow_idle_s=0.5) == ["2", "3", "1"]
    assert engine.steps == [[2], [2], [3], [3], [3], [1]]


def test_a_shadow_copy_that_waited_half_its_timeout_joins_beside_served_rows() -> None:
    engine = FakeStepEngine(gated=True)
    settings = GatewaySettings(batch_wait_ms=0, shadow_timeout_s=1.0)

    async def body(scheduler: BatchScheduler) -> list[Generation]:
        served = asyncio.ensure_future(scheduler.submit(row(30), "served"))
        await until(lambda: scheduler.running("served") == 1)
        shadow = asyncio.ensure_future(scheduler.submit(row(3), "shadow"))
        await asyncio.sleep(0.6)  # past half of shadow_timeout_s, before all of it
        engine.allow(100)
        return await gather_list(served, shadow)

    assert texts(run_with(settings, engine, body)) == ["30", "3"]
    assert engine.steps[:4] == [[30], [30, 3], [30, 3], [30, 3]]
    assert engine.steps[4] == [30]


def test_a_later_request_joins_between_steps_and_leaves_before_the_long_one_ends() -> None:
    engine = FakeStepEngine(gated=True)
    order: list[str] = []

    async def body(scheduler: BatchScheduler) -> None:
        async def ask(n: int) -> None:
            order.append((await scheduler.submit(row(n), "served")).text)

        long = asyncio.ensure_future(ask(6))
        engine.allow(2)
        await until(lambda: len(engine.steps) == 2)
        short = asyncio.ensure_future(ask(2))
        await asyncio.sleep(0.05)
        engine.allow(3)  # the step already waiting, then two with the short request in the batch
        await until(lambda: order == ["2"])
        assert not long.done()  # the short request was answered while the long one still runs
        engine.allow(10)
        await asyncio.gather(long, short)

    run_with(GatewaySettings(batch_wait_ms=0), engine, body)
    assert order == ["2", "6"]
    assert engine.steps == [[6], [6], [6], [6, 2], [6, 2], [6]]


def test_shadow_copies_join_one_per_step_up_to_shadow_concurrency() -> None:
    engine = FakeStepEngine()
    settings = GatewaySettings(batch_wait_ms=20, max_batch_size=3, shadow_concurrency=2)

    async def body(scheduler: BatchScheduler) -> None:
        await asyncio.gather(
            *(scheduler.submit(row(n), "served") for n in (1, 2)),
            *(scheduler.submit(row(n), "shadow") for n in (3, 4, 5)),
        )

    run_with(settings, engine, body)
    assert engine.steps == [[1, 2], [2], [3], [3, 4], [3, 4], [4, 5], [4, 5], [5], [5], [5]]


def test_full_queues_shed_shadow_first_then_refuse_served() -> None:
    engine = FakeStepEngine(gated=True)
    settings = GatewaySettings(batch_wait_ms=0, max_batch_size=1, max_queued_requests=2, shadow_queue_size=1)

    async def body(scheduler: BatchScheduler) -> list[object]:
        first = asyncio.ensure_future(scheduler.submit(row(1), "served"))  # runs, its step held
        await until(lambda: scheduler.running("served") == 1)
        waiting = [asyncio.ensure_future(scheduler.submit(row(n), "served")) for n in (2, 3)]
        shadow = asyncio.ensure_future(scheduler.submit(row(9), "shadow"))
        await until(lambda: scheduler.depth("shadow") == 1)
        with pytest.raises(ShadowShed):
            await scheduler.submit(row(10), "shadow")  # the shadow queue is full
        with pytest.raises(Overloaded):
            await scheduler.submit(row(4), "served")  # the served queue is full: refuse, and shed shadow
        with pytest.raises(ShadowShed):
            await shadow
        engine.allow(100)
        return [await f for f in (first, *waiting)]

    results = run_with(settings, engine, body)
    assert texts(results) == ["1", "2", "3"]
    assert engine.steps == [[1], [2], [2], [3], [3], [3]]


def test_a_failed_step_runs_served_rows_again_without_shadow_rows() -> None:
    engine = FakeStepEngine(gated=True, fail_at=2)

    async def body(scheduler: BatchScheduler) -> list[object]:
        shadow = asyncio.ensure_future(scheduler.submit(row(5), "shadow"))  # joins the idle batch
        await until(lambda: scheduler.running("shadow") == 1)
        served = asyncio.ensure_future(scheduler.submit(row(2), "served"))
        await asyncio.sleep(0.05)
        engine.allow(100)
        return list(await asyncio.gather(served, shadow, return_exceptions=True))

    served, shadow = run_with(GatewaySettings(batch_wait_ms=0), engine, body)
    assert texts([served]) == ["2"]
    assert isinstance(shadow, RuntimeError)
    assert engine.steps == [[5], [5, 2], [2], [2]]


def test_a_failed_step_without_shadow_rows_fails_its_served_rows() -> None:
    engine = FakeStepEngine()

    async def body(scheduler: BatchScheduler) -> list[object]:
        return list(await asyncio.gather(scheduler.submit(row(2, "bad"), "served"), return_exceptions=True))

    [served] = run_with(GatewaySettings(batch_wait_ms=0), engine, body)
    assert isinstance(served, RuntimeError)
    assert engine.steps == [[2]]


def test_shadow_copies_are_shed_while_served_requests_wait() -> None:
    engine = FakeStepEngine()
    settings = GatewaySettings(batch_wait_ms=20, max_batch_size=2)

    async def body(scheduler: BatchScheduler) -> list[object]:
        served = [scheduler.submit(row(n), "served") for n in (1, 2, 3)]
        return await asyncio.gather(*served, scheduler.submit(row(9), "shadow"), return_exceptions=True)

    results = run_with(settings, engine, body)
    assert texts(results[:3]) == ["1", "2", "3"]
    assert isinstance(results[3], ShadowShed)
    assert engine.steps == [[1, 2], [2, 3], [3], [3]]


def test_running_shadow_rows_stop_when_served_requests_pile_up() -> None:
    engine = FakeStepEngine(gated=True)
    settings = GatewaySettings(batch_wait_ms=0, max_batch_size=2, shadow_preempt_depth=2)
    shadow_row = row(50)

    async def body(scheduler: BatchScheduler) -> object:
        shadow = asyncio.ensure_future(scheduler.submit(shadow_row, "shadow"))  # runs, its step held
        await until(lambda: scheduler.running("shadow") == 1)
        served = [asyncio.ensure_future(scheduler.submit(row(n), "served")) for n in (1, 2, 3)]
        await asyncio.sleep(0.05)
        engine.allow(100)
        outcome = await asyncio.gather(shadow, return_exceptions=True)
        assert texts(await asyncio.gather(*served)) == ["1", "2", "3"]
        return outcome[0]

    assert isinstance(run_with(settings, engine, body), ShadowShed)
    assert shadow_row.cancelled
    # One served request takes the free place; two still wait, which stops every shadow row.
    assert engine.steps == [[50], [1], [2, 3], [2, 3], [3]]


def test_served_rows_take_the_places_of_running_shadow_rows_in_a_full_batch() -> None:
    engine = FakeStepEngine(gated=True)
    settings = GatewaySettings(batch_wait_ms=0, max_batch_size=2, shadow_concurrency=2)

    async def body(scheduler: BatchScheduler) -> list[object]:
        shadows = [asyncio.ensure_future(scheduler.submit(row(n), "shadow")) for n in (50, 51)]
        await until(lambda: scheduler.running("shadow") == 1)
        engine.allow(1)
        await until(lambda: scheduler.running("shadow") == 2)
        served = asyncio.ensure_future(scheduler.submit(row(1), "served"))
        await asyncio.sleep(0.05)
        engine.allow(100)
        return [await served, *await asyncio.gather(*shadows, return_exceptions=True)]

    served, kept, preempted = run_with(settings, engine, body)
    assert texts([served, kept]) == ["1", "50"]
    assert isinstance(preempted, ShadowShed)  # the newest shadow row gave its place
    assert engine.steps[:5] == [[50], [50, 51], [50], [50, 1], [50]]
