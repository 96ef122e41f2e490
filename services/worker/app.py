"""The worker application: owns the DuckDB file, runs the sink, answers queries on live data."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI

from feedback.errors import FlywheelError, KafkaUnavailableError
from feedback.lake import Lake
from feedback.rollup import refresh_rollup
from feedback.settings import Settings, get_settings
from feedback.store import DuckDBStore
from feedback.topics import ensure_topics
from services.worker.reports import router as reports_router
from services.worker.routes import router
from services.worker.sink import Sink

log = logging.getLogger(__name__)

_RETRY_SECONDS = 2.0  # wait between attempts to reach Kafka
_PURGE_EVERY_SECONDS = 3600.0  # retention runs hourly: it removes whole days, so more often is useless


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


def run_lake_forever(lake: Lake, settings: Settings, stop: threading.Event) -> None:
    """Export new rows every ``worker.lake_export_interval_s``; apply retention every hour."""
    last_purge = float("-inf")
    while not stop.wait(settings.worker.lake_export_interval_s):
        try:
            lake.export()
            if time.monotonic() - last_purge > _PURGE_EVERY_SECONDS:
                last_purge = time.monotonic()
                purged = lake.purge(settings.worker.retention_days)
                if purged.days or any(purged.rows.values()):
                    log.info("retention purged days %s, rows %s", purged.days, purged.rows)
        except (FlywheelError, OSError) as exc:  # the next round retries; rows wait in DuckDB
            log.warning("lake export failed: %s", exc)


def run_rollup_forever(store: DuckDBStore, settings: Settings, stop: threading.Event) -> None:
    """Roll up new rows for reports now and then every ``worker.rollup_interval_s`` (``feedback.rollup``)."""
    while not stop.is_set():
        try:
            refresh_rollup(store)
        except FlywheelError as exc:  # reports stay exact meanwhile: they add the rows past the watermark
            log.warning("rollup refresh failed: %s", exc)
        stop.wait(settings.worker.rollup_interval_s)


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
        lake = Lake(store, worker.lake_dir)
        threads = [
            threading.Thread(target=run_sink_forever, args=(sink, resolved, stop), name="sink", daemon=True),
            threading.Thread(target=run_lake_forever, args=(lake, resolved, stop), name="lake", daemon=True),
            threading.Thread(target=run_rollup_forever, args=(store, resolved, stop), name="rollup", daemon=True),
        ]
        app.state.settings, app.state.store, app.state.sink, app.state.lake = resolved, store, sink, lake
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            sink.stop()
            for thread in threads:
                thread.join(timeout=30)
            log.info("sink stopped: %s", asdict(sink.stats))
            store.close()

    app = FastAPI(title="flywheel worker", lifespan=lifespan)
    app.include_router(router)
    app.include_router(reports_router)
    return app
