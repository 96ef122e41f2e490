"""The shadow path: the challenger answers a copy of a request in the background.

It never delays or fails the served answer. Copies are bounded (``shadow_queue_size`` waiting in
the scheduler, ``shadow_concurrency`` per batch, ``shadow_timeout_s`` each, a sampling rate in the
deployment) and shed first under load; every outcome is counted in the metrics, and every copy
that ran, whether it answered, failed, hung or returned garbage, becomes an interaction event with
``role="shadow"`` and ``arm="challenger"``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from feedback.model.runtime import Generation
from feedback.settings import GatewaySettings
from services.gateway.backend import GenerationRequest, InferenceBackend
from services.gateway.metrics import GatewayMetrics
from services.gateway.scheduler import ShadowShed

log = logging.getLogger(__name__)

Record = Callable[[Generation | None, str | None], None]
"""Records the shadow event: the generation, or None and the error."""


class ShadowRunner:
    """Runs shadow copies as background tasks and keeps them bounded."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Shadow copies queued or running."""
        return len(self._tasks)

    def submit(self, backend: InferenceBackend, request: GenerationRequest, record: Record) -> None:
        """Start a shadow copy, or shed it at once when too many are in flight."""
        if len(self._tasks) >= self._settings.shadow_queue_size + self._settings.shadow_concurrency:
            self._metrics.shadow.labels(outcome="shed").inc()
            return
        task = asyncio.get_running_loop().create_task(self._run(backend, request, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel what is still running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, backend: InferenceBackend, request: GenerationRequest, record: Record) -> None:
        timeout = self._settings.shadow_timeout_s
        try:
            generation = await asyncio.wait_for(backend.generate(request), timeout)
        except ShadowShed:
            self._metrics.shadow.labels(outcome="shed").inc()
            return
        except TimeoutError:
            self._finish(record, None, f"shadow timed out after {timeout:g} s", "timeout")
            return
        except Exception as exc:  # the challenger's failure is data, never the user's problem
            self._finish(record, None, f"{type(exc).__name__}: {exc}", "error")
            return
        self._finish(record, generation, None, "completed")

    def _finish(self, record: Record, generation: Generation | None, error: str | None, outcome: str) -> None:
        try:
            record(generation, error)
        except Exception as exc:  # garbage from the challenger fails validation: record that instead
            log.warning("shadow answer could not be recorded: %s", exc)
            outcome = "invalid"
            try:
                record(None, f"invalid shadow answer: {type(exc).__name__}: {exc}"[:2000])
            except Exception:
                log.exception("shadow error event could not be recorded")
                outcome = "unrecorded"
        self._metrics.shadow.labels(outcome=outcome).inc()
