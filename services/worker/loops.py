"""The ingest side's background loops: the sink, and the lake export with retention.

The worker runs them beside its API; a sink shard process (``services.worker.shard``) runs them
alone. Kept apart from the worker app so that a sink process starts without the model runtime.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from feedback.audit import AuditTrail
from feedback.errors import FlywheelError, KafkaUnavailableError
from feedback.lake import ExportResult, Lake, PurgeResult
from feedback.settings import Settings
from feedback.topics import ensure_topics
from services.worker.audit_events import purged, record
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


def run_lake_forever(
    lake: Lake,
    settings: Settings,
    stop: threading.Event,
    trail: AuditTrail | None = None,
    exported: Callable[[ExportResult], None] | None = None,
) -> None:
    """Export new rows every ``worker.lake_export_interval_s`` (each result to ``exported``); retention hourly."""
    last_purge = float("-inf")
    while not stop.wait(settings.worker.lake_export_interval_s):
        try:
            result = lake.export()
            if exported is not None:
                exported(result)
            if time.monotonic() - last_purge > _PURGE_EVERY_SECONDS:
                last_purge = time.monotonic()
                purge(lake, settings, trail)
        except (FlywheelError, OSError) as exc:  # the next round retries; rows wait in DuckDB
            log.warning("lake export failed: %s", exc)


def purge(lake: Lake, settings: Settings, trail: AuditTrail | None) -> PurgeResult:
    """Apply retention (``worker.retention_days``; ``audit.retention_days`` for the audit trail) and audit the run."""
    keep, audit_keep = settings.worker.retention_days, settings.audit.retention_days
    result = lake.purge(keep, audit_keep_days=audit_keep)
    if result.days or any(result.rows.values()):
        log.info("retention purged days %s, rows %s", result.days, result.rows)
    record(trail, purged(result, keep, audit_keep))
    return result
