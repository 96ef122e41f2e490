"""Sink shards: several sink processes in one consumer group, each writing its own DuckDB file, one lake.

Kafka's group coordinator splits the partitions between the shards and moves a stopped shard's
partitions to the others. Each shard exports its rows into the same lake root, its file names
carrying its name, and commits to Kafka the offsets the lake holds (``services.worker.checkpoints``),
so the next owner of a partition resumes where the lake ends; an event two shards both wrote is
deduplicated by the analyst views (``feedback.sandbox``).

``flywheel sink run --shard NAME`` runs one shard (:func:`run_shard`): the sink, the lake export and
retention, no API. The worker's own sink is a shard too when ``worker.sink_shard`` is set.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from feedback.audit import AuditTrail
from feedback.lake import ExportResult, Lake
from feedback.producer import open_producer
from feedback.settings import Settings
from feedback.store import DuckDBStore
from services.worker.checkpoints import KafkaCheckpoints
from services.worker.loops import run_lake_forever, run_sink_forever
from services.worker.sink import Sink, SinkStats

log = logging.getLogger(__name__)

_JOIN_TIMEOUT_S = 120.0  # a stopping shard exports what it stored before it leaves the group


@dataclass
class Ingest:
    """One process's sink and lake, wired for the only sink or for one shard of several."""

    sink: Sink
    lake: Lake

    def exported(self, result: ExportResult) -> None:
        """Hand an export's offsets to the sink, which commits them to Kafka when it is a shard."""
        if self.sink.checkpoints is not None:
            self.sink.checkpoints.lake_holds(result.offsets)


def open_ingest(settings: Settings, store: DuckDBStore) -> Ingest:
    """The sink and the lake of ``store``; one shard of several when ``worker.sink_shard`` is set."""
    worker = settings.worker
    lake = Lake(store, worker.lake_dir, shard=worker.sink_shard)
    checkpoints = KafkaCheckpoints(settings.kafka, lambda: lake.export().offsets) if worker.sink_shard else None
    sink = Sink(
        settings.kafka,
        store,
        batch_max=worker.batch_max_events,
        poll_timeout_ms=worker.poll_timeout_ms,
        max_event_bytes=worker.max_event_bytes,
        fetch_max_bytes=worker.fetch_max_bytes,
        session_timeout_ms=worker.sink_session_timeout_ms,
        checkpoints=checkpoints,
    )
    return Ingest(sink, lake)


def shard_db_path(settings: Settings) -> Path:
    """A shard's DuckDB file unless told otherwise: the worker's file name with the shard's, beside it."""
    path = settings.duckdb.path
    return path.with_name(f"{path.stem}-{settings.worker.sink_shard}{path.suffix}")


def run_shard(settings: Settings, db_path: Path, stop: threading.Event, progress_s: float) -> SinkStats:
    """Run the shard ``worker.sink_shard`` on ``db_path`` until ``stop``; log its counts every ``progress_s``.

    Stopping exports every stored row and commits its offsets before the shard leaves the group.
    """
    shard = settings.worker.sink_shard
    store = DuckDBStore(db_path, memory_limit=settings.duckdb.memory_limit, threads=settings.duckdb.threads)
    producer = open_producer(settings, db_path.parent / f"audit-wal-{shard}")  # audit.wal_dir is the worker's
    producer.start()
    ingest = open_ingest(settings, store)
    trail = AuditTrail(producer, settings.kafka.topics.audit)  # retention runs are audited, as the worker's
    threads = [
        threading.Thread(target=run_sink_forever, args=(ingest.sink, settings, stop), name="sink", daemon=True),
        threading.Thread(
            target=run_lake_forever,
            args=(ingest.lake, settings, stop, trail, ingest.exported),
            name="lake",
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    log.info("sink shard %s: %s, lake %s", shard, db_path, settings.worker.lake_dir)
    try:
        while not stop.wait(progress_s):
            log.info("sink shard %s: %s", shard, json.dumps(asdict(ingest.sink.stats)))
    finally:
        stop.set()
        ingest.sink.stop()
        for thread in threads:
            thread.join(timeout=_JOIN_TIMEOUT_S)
        log.info("sink shard %s stopped: %s", shard, json.dumps(asdict(ingest.sink.stats)))
        store.close()
        producer.close(timeout_s=settings.gateway.drain_timeout_s)
    return ingest.sink.stats
