"""The batching scheduler with a fake batch runner: merging, served first, shedding, 429s."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from feedback.model.batch import BatchRow
from feedback.model.runtime import Generation, SamplingParams
from feedback.settings import GatewaySettings
from services.gateway.metrics import GatewayMetrics
from services.gateway.scheduler import BatchScheduler, Overloaded, ShadowShed


class FakeBatchRunner:
    """Records each batch; answers each row with its prompt length; can hold batches until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, rows: Sequence[BatchRow]) -> list[Generation]:
        self.batches.append([len(row.prompt_ids) for row in rows])
        self.release.wait(10)
        results = []
        for row in rows:
            generation = Generation(
                text=str(len(row.prompt_ids)),
                prompt_tokens=len(row.prompt_ids),
                completion_tokens=1,
                finish_reason="stop",
                confidence=1.0,
                token_logprobs=(0.0,),
            )
            if row.on_done is not None:
                row.on_done(generation)
            results.append(generation)
        return results


def row(n: int) -> BatchRow:
    return BatchRow(list(range(n)), SamplingParams(max_tokens=4))


async def run_with(settings: GatewaySettings, runner: FakeBatchRunner, body: object) -> object:
    scheduler = BatchScheduler(runner, settings, GatewayMetrics())
    scheduler.start()
    try:
        return await body(scheduler)  # type: ignore[operator]
    finally:
        await scheduler.close()


def test_concurrent_requests_share_one_batch_served_first() -> None:
    runner = FakeBatchRunner()

    async def body(scheduler: BatchScheduler) -> list[Generation]:
        return await asyncio.gather(
            scheduler.submit(row(1), "shadow"), scheduler.submit(row(2), "served"), scheduler.submit(row(3), "served")
        )

    results = asyncio.run(run_with(GatewaySettings(batch_wait_ms=20), runner, body))
    assert [g.text for g in results] == ["1", "2", "3"]  # type: ignore[union-attr]
    assert runner.batches == [[2, 3, 1]]


def test_batches_respect_size_and_shadow_concurrency() -> None:
    runner = FakeBatchRunner()
    settings = GatewaySettings(batch_wait_ms=20, max_batch_size=3, shadow_concurrency=1)

    async def body(scheduler: BatchScheduler) -> None:
        await asyncio.gather(
            *(scheduler.submit(row(n), "served") for n in (1, 2)), *(scheduler.submit(row(n), "shadow") for n in (7, 8))
        )

    asyncio.run(run_with(settings, runner, body))
    assert runner.batches == [[1, 2, 7], [8]]


def test_full_queues_shed_shadow_first_then_refuse_served() -> None:
    runner = FakeBatchRunner()
    runner.release.clear()
    settings = GatewaySettings(batch_wait_ms=0, max_queued_requests=2, shadow_queue_size=1)

    async def body(scheduler: BatchScheduler) -> list[object]:
        first = asyncio.ensure_future(scheduler.submit(row(1), "served"))  # runs, held by the runner
        await asyncio.sleep(0.1)
        waiting = [asyncio.ensure_future(scheduler.submit(row(n), "served")) for n in (2, 3)]
        shadow = asyncio.ensure_future(scheduler.submit(row(9), "shadow"))
        await asyncio.sleep(0.05)
        with pytest.raises(ShadowShed):
            await scheduler.submit(row(10), "shadow")  # the shadow queue is full
        with pytest.raises(Overloaded):
            await scheduler.submit(row(4), "served")  # the served queue is full: refuse, and shed shadow
        with pytest.raises(ShadowShed):
            await shadow
        runner.release.set()
        return [await f for f in (first, *waiting)]

    results = asyncio.run(run_with(settings, runner, body))
    assert [g.text for g in results] == ["1", "2", "3"]  # type: ignore[attr-defined]
    assert runner.batches == [[1], [2, 3]]


def test_a_failed_mixed_batch_retries_served_rows_alone() -> None:
    calls: list[list[str]] = []

    def flaky(rows: Sequence[BatchRow]) -> list[Generation]:
        calls.append([r.adapter for r in rows])
        if any(r.adapter == "bad" for r in rows):
            raise RuntimeError("adapter exploded")
        return FakeBatchRunner()(rows)

    async def body(scheduler: BatchScheduler) -> list[object]:
        bad = BatchRow([1], SamplingParams(max_tokens=4), adapter="bad")
        return await asyncio.gather(
            scheduler.submit(row(2), "served"), scheduler.submit(bad, "shadow"), return_exceptions=True
        )

    served, shadow = asyncio.run(run_with(GatewaySettings(batch_wait_ms=20), flaky, body))  # type: ignore[arg-type, misc]
    assert served.text == "2"  # type: ignore[attr-defined]
    assert isinstance(shadow, RuntimeError)
    assert calls == [["__base__", "bad"], ["__base__"]]


def test_shadow_copies_are_shed_while_served_requests_wait() -> None:
    runner = FakeBatchRunner()
    settings = GatewaySettings(batch_wait_ms=20, max_batch_size=2)

    async def body(scheduler: BatchScheduler) -> list[object]:
        served = [scheduler.submit(row(n), "served") for n in (1, 2, 3)]
        return await asyncio.gather(*served, scheduler.submit(row(9), "shadow"), return_exceptions=True)

    results = asyncio.run(run_with(settings, runner, body))
    assert [getattr(r, "text", None) for r in results[:3]] == ["1", "2", "3"]  # type: ignore[index]
    assert isinstance(results[3], ShadowShed)  # type: ignore[index]
    assert runner.batches == [[1, 2], [3]]


def test_running_shadow_rows_stop_when_served_requests_pile_up() -> None:
    runner = FakeBatchRunner()
    runner.release.clear()
    settings = GatewaySettings(batch_wait_ms=0, shadow_preempt_depth=2)

    async def body(scheduler: BatchScheduler) -> tuple[object, list[BatchRow]]:
        shadow_row = row(9)
        shadow = asyncio.ensure_future(scheduler.submit(shadow_row, "shadow"))  # runs, held by the runner
        await asyncio.sleep(0.1)
        served = [asyncio.ensure_future(scheduler.submit(row(n), "served")) for n in (1, 2)]
        await asyncio.sleep(0.05)
        runner.release.set()
        outcome = await asyncio.gather(shadow, return_exceptions=True)
        await asyncio.gather(*served)
        return outcome[0], [shadow_row]

    outcome, [shadow_row] = asyncio.run(run_with(settings, runner, body))  # type: ignore[misc]
    assert isinstance(outcome, ShadowShed)
    assert shadow_row.cancelled
    assert runner.batches == [[9], [1, 2]]
