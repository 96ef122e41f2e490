"""Continuous batching: concurrent requests, served and shadow, join and leave one running batch.

Requests wait in two queues. The scheduler loop drives a step engine
(:class:`feedback.model.batch.ContinuousBatch`) one decoding step at a time, in a worker thread
(the model is one). Before each step it admits waiting requests into the free places of the
running batch (``max_batch_size`` rows in all): served requests first, then shadow copies, at most
``shadow_concurrency`` shadow rows running at once. A request that arrives while the batch runs
joins at the next step; a row that finishes resolves its request at once and leaves the batch,
so a short request never waits for a long one. When the batch is empty, the first request waits
``batch_wait_ms`` so that requests arriving together share one prefill.

Served rows are protected from shadow rows:

- a shadow copy joins only when the batch has held no served rows and no served request has
  waited for :data:`SHADOW_IDLE_S` (on a compute-bound machine a shadow row slows every served
  row beside it, and its prefill stalls them for a whole forward pass), or once it has waited
  half of ``shadow_timeout_s``, so that busy traffic slows shadow copies but never starves them;
- copies join one per step, so a served request arriving meanwhile waits for at most one shadow
  prefill; shadow rows already running keep going while served requests join;
- queued copies are dropped when served requests are left waiting for room, when a served
  request is refused, or when they waited past ``shadow_timeout_s``;
- served requests left waiting for room take the places of running shadow rows at the next
  step: as many as wait, and every shadow row once ``shadow_preempt_depth`` wait.

Every shed copy is counted. A served request is refused with :class:`Overloaded` (answered 429)
only when ``max_queued_requests`` already wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from feedback.events import Role
from feedback.model.batch import BatchRow
from feedback.model.rows import restart
from feedback.model.runtime import Generation
from feedback.settings import GatewaySettings
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

SHADOW_IDLE_S = 0.1
"""Seconds without served rows before shadow copies count the batch as idle: a client that was
just answered sends its next request within a few milliseconds, and a shadow prefill started in
that gap would stall it."""


class StepEngine(Protocol):
    """A running batch that advances one decoding step at a time (ContinuousBatch is the real one)."""

    def step(self, newcomers: Sequence[BatchRow] = ()) -> list[BatchRow]: ...

    def reset(self) -> list[BatchRow]: ...


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
    retry: bool = False  # a served row whose batch failed, run again without shadow rows


class BatchScheduler:
    """Feeds concurrent requests into one running batch (see the module docstring)."""

    def __init__(
        self,
        engine: StepEngine,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        *,
        shadow_idle_s: float = SHADOW_IDLE_S,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._metrics = metrics
        self._shadow_idle_s = shadow_idle_s
        self._served_at = 0.0  # when a served request last waited or ran
        self._queues: dict[Role, deque[_Job]] = {"served": deque(), "shadow": deque()}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: list[_Job] = []

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batch-scheduler")

    async def close(self) -> None:
        """Stop the loop; waiting and running requests fail."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        jobs = [*self._running, *(job for queue in self._queues.values() for job in queue)]
        for queue in self._queues.values():
            queue.clear()
        self._running = []
        for job in jobs:
            job.row.cancelled = True
            if not job.future.done():
                job.future.set_exception(RuntimeError("the gateway is shutting down"))

    def depth(self, role: Role) -> int:
        """Requests of ``role`` waiting to join the batch."""
        return len(self._queues[role])

    def running(self, role: Role) -> int:
        """Rows of ``role`` in the running batch."""
        return sum(job.role == role for job in self._running)

    async def submit(self, row: BatchRow, role: Role) -> Generation:
        """Queue ``row`` and wait for its generation; cancelling the wait cancels the row."""
        if role == "served" and len(self._queues["served"]) >= self._settings.max_queued_requests:
            self._shed_shadow(len(self._queues["shadow"]))
            self._metrics.rejected.inc()
            raise Overloaded
        if role == "shadow" and len(self._queues["shadow"]) >= self._settings.shadow_queue_size:
            raise ShadowShed
        job = _Job(row, role, asyncio.get_running_loop().create_future())
        if role == "served":
            self._served_at = time.monotonic()
        self._queues[role].append(job)
        self._update_depths()
        self._wakeup.set()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            row.cancelled = True  # the row leaves at the next step; a queued one is skipped
            raise

    def _shed_shadow(self, count: int) -> None:
        queue = self._queues["shadow"]
        for _ in range(min(count, len(queue))):
            job = queue.pop()  # the newest first: the oldest may be about to run
            if not job.future.done():
                job.future.set_exception(ShadowShed())
        self._update_depths()

    def _preempt_shadow(self, count: int) -> None:
        """Stop up to ``count`` running shadow rows, the newest first (they have done the least)."""
        for job in reversed(self._running):
            if count <= 0:
                return
            if job.role == "shadow" and not job.row.cancelled:
                job.row.cancelled = True  # the row leaves at the next step
                if not job.future.done():
                    job.future.set_exception(ShadowShed())
                count -= 1

    def _update_depths(self) -> None:
        for role, queue in self._queues.items():
            self._metrics.queue_depth.labels(role=role).set(len(queue))

    async def _loop(self) -> None:
        while True:
            if not self._running:
                await self._wakeup.wait()
                if self._settings.batch_wait_ms > 0:
                    await asyncio.sleep(self._settings.batch_wait_ms / 1000)
            newcomers = self._admit()
            if not any(self._queues.values()):
                self._wakeup.clear()
            if self._running or newcomers:
                await self._step(newcomers)
            elif self._queues["shadow"]:
                await self._idle()

    async def _idle(self) -> None:
        """Only shadow copies wait: give served traffic the rest of its pause, or until a request comes."""
        self._wakeup.clear()
        remaining = self._served_at + self._shadow_idle_s - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), max(remaining, 0.001))
        self._wakeup.set()

    def _admit(self) -> list[_Job]:
        """Take the waiting requests that join at the next step."""
        self._drop_stale_shadow()
        live = [job for job in self._running if not job.row.cancelled]
        room = self._settings.max_batch_size - len(live)
        newcomers = self._take("served", room)
        retrying = any(job.retry for job in newcomers)
        waiting = len(self._queues["served"])
        if waiting:
            # Served requests wait for room: shed the queued shadow copies, and give them the
            # places of running shadow rows at the next step (all of them once many wait).
            self._shed_shadow(len(self._queues["shadow"]))
            self._preempt_shadow(len(live) if waiting >= self._settings.shadow_preempt_depth else waiting)
        elif not retrying and self._spare_for_shadow(live, newcomers):
            shadow = sum(job.role == "shadow" for job in live)
            limit = min(room - len(newcomers), self._settings.shadow_concurrency - shadow, 1)
            newcomers += self._take("shadow", limit)
        self._update_depths()
        return newcomers

    def _spare_for_shadow(self, live: list[_Job], newcomers: list[_Job]) -> bool:
        """Whether shadow copies may join now: the batch has no served rows, or the oldest copy has waited long.

        On a compute-bound machine every shadow row slows the served rows beside it, and a shadow
        prefill stalls them for a whole forward pass; so copies wait for spare capacity (no served
        row for ``shadow_idle_s``), and join one per step, so a served request arriving meanwhile
        waits for at most one shadow prefill.
        Waiting half of ``shadow_timeout_s`` admits them anyway: busy traffic slows shadow copies
        but never starves them.
        """
        if any(job.role == "served" for job in (*live, *newcomers)):
            self._served_at = time.monotonic()
        elif time.monotonic() - self._served_at >= self._shadow_idle_s:
            return True
        queue = self._queues["shadow"]
        return bool(queue) and time.monotonic() - queue[0].enqueued >= self._settings.shadow_timeout_s / 2

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

    async def _step(self, newcomers: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        for job in newcomers:
            # A row that finishes resolves its request at once; the others keep the batch going.
            job.row.on_done = functools.partial(_resolve_from_thread, loop, job)
        self._running += newcomers
        self._metrics.batch_size.observe(len(self._running))
        try:
            await asyncio.to_thread(self._engine.step, [job.row for job in newcomers])
        except Exception as exc:
            self._recover(exc)
        if any(job.role == "served" for job in self._running):
            self._served_at = time.monotonic()
        self._running = [job for job in self._running if not job.row.done]

    def _recover(self, exc: Exception) -> None:
        """A failed step emptied the batch: shadow rows fail; served rows run again without shadow rows."""
        failed, self._running = self._running, []
        log.warning("a batch step of %d rows failed: %s", len(failed), exc)
        unfinished = [job for job in failed if not job.future.done() and not job.row.done]
        retry = any(job.role == "shadow" for job in unfinished)
        for job in reversed(unfinished):
            if job.role == "served" and retry and not job.retry:
                restart(job.row)
                job.retry = True
                self._queues["served"].appendleft(job)
            else:
                job.future.set_exception(exc)
        self._wakeup.set()


def _resolve_from_thread(loop: asyncio.AbstractEventLoop, job: _Job, generation: Generation) -> None:
    loop.call_soon_threadsafe(_resolve, job, generation)


def _resolve(job: _Job, generation: Generation) -> None:
    if not job.future.done():
        job.future.set_result(generation)
