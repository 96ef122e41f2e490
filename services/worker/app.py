"""The worker application: owns the DuckDB file, runs the sink, answers queries on live data."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI

from feedback.errors import KafkaUnavailableError
from feedback.settings import Settings, get_settings
from feedback.store import DuckDBStore
from feedback.topics import ensure_topics
from services.worker.routes import router
from services.worker.sink import Sink

log = logging.getLogger(__name__)

_RETRY_SECONDS = 2.0  # wait between attempts to reach Kafka


def run_sink_forever(sink: Sink, settings: Settings, stop: threading.Event) -> None:
    """Create topics and run the sink, reconnecting while Kafka is unreachable, until ``stop``."""
    while not stop.is_set():
        try:
            ensure_topics(settings.kafka)
            sink.run()
        except KafkaUnavailableError as exc:
            log.warning("sink waiting for Kafka: %s", exc)
        except Exception:  # a crashed sink restarts from DuckDB's offsets; nothing is lost
            log.exception("sink stopped with an error; restarting")
        stop.wait(_RETRY_SECONDS)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the worker app; its lifespan opens DuckDB and starts the sink thread."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or get_settings()
        store = DuckDBStore(
            resolved.duckdb.path, memory_limit=resolved.duckdb.memory_limit, threads=resolved.duckdb.threads
        )
        worker = resolved.worker
        sink = Sink(
            resolved.kafka,
            store,
            batch_max=worker.batch_max_events,
            poll_timeout_ms=worker.poll_timeout_ms,
            max_event_bytes=worker.max_event_bytes,
            fetch_max_bytes=worker.fetch_max_bytes,
        )
        stop = threading.Event()
        thread = threading.Thread(target=run_sink_forever, args=(sink, resolved, stop), name="sink", daemon=True)
        app.state.settings, app.state.store, app.state.sink = resolved, store, sink
        thread.start()
        try:
            yield
        finally:
            stop.set()
            sink.stop()
            thread.join(timeout=30)
            log.info("sink stopped: %s", asdict(sink.stats))
            store.close()

    app = FastAPI(title="flywheel worker", lifespan=lifespan)
    app.include_router(router)
    return app
