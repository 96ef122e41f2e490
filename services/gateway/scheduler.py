"""Dynamic batching: concurrent requests, served and shadow, share generate batches.

Requests wait in two queues. The scheduler loop takes the first waiting request, lets others join
for ``batch_wait_ms``, then forms a batch of up to ``max_batch_size`` rows: served rows first,
then at most ``shadow_concurrency`` shadow rows. It runs the batch in a worker thread (one at a
time: the model is one) and resolves each request's future. Requests that arrive while a batch
runs form the next one (micro-batching: a request joins at the next batch boundary, not between
the steps of a running batch).

Under load the shadow queue is shed first: a shadow copy is refused when its queue is full, and
queued copies are dropped when served requests are left waiting after a batch was formed, when a
served request is refused, or when they waited past ``shadow_timeout_s``; shadow rows already
generating stop at their next step once ``shadow_preempt_depth`` served requests wait, so the
batch ends with its served rows and the waiting ones start. Every shed copy is counted. A served request is refused with
:class:`Overloaded` (answered 429) only when ``max_queued_requests`` already wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from feedback.events import Role
from feedback.model.batch import BatchRow
from feedback.model.runtime import Generation
from feedback.settings import GatewaySettings
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

RunBatch = Callable[[Sequence[BatchRow]], list[Generation]]


class Overloaded(Exception):
    """Too many served requests wait; the client should retry later."""


class ShadowShed(Exception):
    """A shadow copy was dropped to protect served traffic."""


@dataclass
class _Job:
    row: BatchRow
    role: Role
    future: asyncio.Future[Generation]
    enqueued: float = field(default_factory=time.monotonic)


class BatchScheduler:
    """Merges concurrent requests into shared batches (see the module docstring)."""

    def __init__(self, run_batch: RunBatch, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self._run_batch = run_batch
        self._settings = settings
        self._metrics = metrics
        self._queues: dict[Role, deque[_Job]] = {"served": deque(), "shadow": deque()}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: list[_Job] = []

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batch-scheduler")

    async def close(self) -> None:
        """Stop the loop; waiting requests fail."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queue in self._queues.values():
            while queue:
                job = queue.popleft()
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the gateway is shutting down"))

    def depth(self, role: Role) -> int:
        """Requests of ``role`` waiting for a batch."""
        return len(self._queues[role])

    async def submit(self, row: BatchRow, role: Role) -> Generation:
        """Queue ``row`` and wait for its generation; cancelling the wait cancels the row."""
        if role == "served" and len(self._queues["served"]) >= self._settings.max_queued_requests:
            self._shed_shadow(len(self._queues["shadow"]))
            self._metrics.rejected.inc()
            raise Overloaded
        if role == "shadow" and len(self._queues["shadow"]) >= self._settings.shadow_queue_size:
            raise ShadowShed
        job = _Job(row, role, asyncio.get_running_loop().create_future())
        self._queues[role].append(job)
        self._update_depths()
        if role == "served" and len(self._queues["served"]) >= self._settings.shadow_preempt_depth:
            self._preempt_shadow()
        self._wakeup.set()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            row.cancelled = True  # the row stops at its next step; a queued one is skipped
            raise

    def _shed_shadow(self, count: int) -> None:
        queue = self._queues["shadow"]
        for _ in range(min(count, len(queue))):
            job = queue.pop()  # the newest first: the oldest may be about to run
            if not job.future.done():
                job.future.set_exception(ShadowShed())
        self._update_depths()

    def _preempt_shadow(self) -> None:
        for job in self._running:
            if job.role == "shadow" and not job.future.done():
                job.row.cancelled = True  # the row stops at its next step
                job.future.set_exception(ShadowShed())

    def _update_depths(self) -> None:
        for role, queue in self._queues.items():
            self._metrics.queue_depth.labels(role=role).set(len(queue))

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            if self._settings.batch_wait_ms > 0:
                await asyncio.sleep(self._settings.batch_wait_ms / 1000)
            batch = self._take_batch()
            if not any(self._queues.values()):
                self._wakeup.clear()
            if batch:
                await self._run(batch)

    def _take_batch(self) -> list[_Job]:
        self._drop_stale_shadow()
        limit = self._settings.max_batch_size
        batch = self._take("served", limit)
        if self._queues["served"]:
            # Served requests still wait: no capacity is left for shadow copies, so shed them now.
            self._shed_shadow(len(self._queues["shadow"]))
        batch += self._take("shadow", min(limit - len(batch), self._settings.shadow_concurrency))
        self._update_depths()
        return batch

    def _take(self, role: Role, limit: int) -> list[_Job]:
        queue, taken = self._queues[role], list[_Job]()
        while queue and len(taken) < limit:
            job = queue.popleft()
            if not job.future.done() and not job.row.cancelled:
                taken.append(job)
        return taken

    def _drop_stale_shadow(self) -> None:
        cutoff = time.monotonic() - self._settings.shadow_timeout_s
        queue = self._queues["shadow"]
        while queue and queue[0].enqueued < cutoff:
            job = queue.popleft()
            if not job.future.done():
                job.future.set_exception(ShadowShed())

    async def _run(self, batch: list[_Job]) -> None:
        self._metrics.batch_size.observe(len(batch))
        loop = asyncio.get_running_loop()
        for job in batch:
            # A row that finishes resolves its request at once; longer rows keep the batch going.
            job.row.on_done = functools.partial(_resolve_from_thread, loop, job)
        self._running = batch
        try:
            await asyncio.to_thread(self._run_batch, [job.row for job in batch])
        except Exception as exc:
            await self._recover(batch, exc)
        finally:
            self._running = []

    async def _recover(self, batch: list[_Job], exc: Exception) -> None:
        """A failed batch: shadow rows fail; served rows run again on their own if shadow rows shared it."""
        log.warning("a batch of %d rows failed: %s", len(batch), exc)
        served = [job for job in batch if job.role == "served" and not job.future.done()]
        for job in batch:
            if job.role == "shadow" and not job.future.done():
                job.future.set_exception(exc)
        if len(served) < len(batch) and served:
            for job in served:
                job.row = _fresh(job.row)
            await self._run(served)
            return
        for job in served:
            job.future.set_exception(exc)


def _resolve_from_thread(loop: asyncio.AbstractEventLoop, job: _Job, generation: Generation) -> None:
    loop.call_soon_threadsafe(_resolve, job, generation)


def _resolve(job: _Job, generation: Generation) -> None:
    if not job.future.done():
        job.future.set_result(generation)


def _fresh(row: BatchRow) -> BatchRow:
    """The row as it was queued, for running it again."""
    return BatchRow(
        row.prompt_ids,
        row.params,
        adapter=row.adapter,
        on_text=row.on_text,
        cancelled=row.cancelled,
        emitted=row.emitted,
    )
