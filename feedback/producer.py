"""The event producer: every event goes to the write-ahead log first, then to Kafka.

``publish`` appends to the log and returns at once; it never waits for Kafka (no metadata fetch,
no buffer space). A sender thread drains the log in order into a kafka-python producer
(``acks=all``, idempotent) and forgets each record when Kafka acknowledges it. When Kafka is
unreachable the producer keeps trying, warns, reports ``connected=False`` in its health, and the
log grows (bounded); when Kafka comes back the log is replayed in order. On any send failure the
sender rewinds to the oldest unacknowledged record and sends again: duplicates are possible,
losses are not, and the sink deduplicates on ``event_id``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kafka import KafkaProducer
from prometheus_client import Counter, Gauge

from feedback.events import AnyEvent
from feedback.settings import KafkaSettings, Settings
from feedback.wal import WalRecord, WriteAheadLog

log = logging.getLogger(__name__)

_SEND_CHUNK = 1000  # records handed to the Kafka client per pass
_RETRY_SECONDS = 2.0  # wait between reconnection attempts
_WARN_EVERY_SECONDS = 30.0  # how often an outage (or a nearly full log) is logged again

WAL_BYTES = Gauge("flywheel_wal_bytes", "Bytes the write-ahead log takes on disk")
WAL_FILL = Gauge("flywheel_wal_fill_ratio", "Write-ahead log size as a fraction of its bound (1 = full)")
WAL_PENDING = Gauge("flywheel_wal_pending_events", "Events in the write-ahead log not yet acknowledged by Kafka")
WAL_NEAR_FULL = Counter(
    "flywheel_wal_near_full_warnings_total", "Times the write-ahead log was found above its warning fraction"
)


class KafkaSender(Protocol):
    """The part of a Kafka producer client that the event producer uses."""

    def send(self, topic: str, *, key: bytes, value: bytes) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


@dataclass(frozen=True)
class ProducerHealth:
    """What the producer reports on the health endpoint."""

    connected: bool
    pending_events: int
    wal_bytes: int
    wal_max_bytes: int
    last_error: str | None
    wal_near_full: bool = False  # above gateway.wal.warn_fraction of its bound


def kafka_sender_factory(kafka: KafkaSettings) -> Callable[[], KafkaSender]:
    """Build real kafka-python producers, tuned for durability and throughput."""

    def build() -> KafkaSender:
        producer: KafkaSender = KafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=kafka.linger_ms,  # let a few events share a request
            batch_size=kafka.batch_bytes,
            compression_type=kafka.compression_type,
            max_block_ms=5_000,  # only the sender thread blocks; requests never do
            request_timeout_ms=kafka.request_timeout_ms,
            bootstrap_timeout_ms=kafka.bootstrap_timeout_ms,
        )
        return producer

    return build


class EventProducer:
    """Publishes events durably: write-ahead log now, Kafka as soon as it is reachable."""

    def __init__(
        self,
        wal: WriteAheadLog,
        sender_factory: Callable[[], KafkaSender],
        *,
        fsync_interval_s: float,
        warn_fraction: float = 0.8,
    ) -> None:
        self._wal = wal
        self._warn_bytes = int(wal.max_bytes * warn_fraction)
        self._near_full = False
        self._last_full_warning = float("-inf")
        self._factory = sender_factory
        self._fsync_interval_s = fsync_interval_s
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._rewind = threading.Event()
        self._connected = False
        self._last_error: str | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the sender and the fsync threads; unacknowledged records are replayed."""
        for target, name in ((self._send_loop, "wal-sender"), (self._sync_loop, "wal-fsync")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def publish(self, topic: str, event: AnyEvent) -> WalRecord:
        """Log an event durably for ``topic``, keyed by ``event.kafka_key()``; never waits for Kafka."""
        record = self._wal.append(topic, event.kafka_key(), event.encode())
        with self._wake:
            self._wake.notify()
        return record

    def _watch_size(self) -> None:
        """Update the metrics; log loudly (every 30 s at most) while the log is nearly full."""
        size, bound = self._wal.size_bytes, self._wal.max_bytes
        WAL_BYTES.set(size)
        WAL_FILL.set(size / bound)
        WAL_PENDING.set(self._wal.pending_count)
        self._near_full = size >= self._warn_bytes
        if self._near_full and time.monotonic() - self._last_full_warning > _WARN_EVERY_SECONDS:
            self._last_full_warning = time.monotonic()
            WAL_NEAR_FULL.inc()
            log.error(
                "WRITE-AHEAD LOG NEARLY FULL: %d of %d bytes (%.0f%%), %d events wait for Kafka (%s); "
                "requests will be refused with 503 when it is full",
                size,
                bound,
                100 * size / bound,
                self._wal.pending_count,
                self._last_error or "Kafka is slow to acknowledge",
            )

    def health(self) -> ProducerHealth:
        """Connection state and backlog."""
        return ProducerHealth(
            connected=self._connected,
            pending_events=self._wal.pending_count,
            wal_bytes=self._wal.size_bytes,
            wal_max_bytes=self._wal.max_bytes,
            last_error=self._last_error,
            wal_near_full=self._near_full,
        )

    def backlog(self, limit: int = 100) -> list[WalRecord]:
        """The oldest ``limit`` events still waiting for Kafka (for diagnostics)."""
        return self._wal.pending(limit=limit)

    def flush(self, timeout_s: float) -> bool:
        """Wait until Kafka has acknowledged everything logged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._wal.pending_count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self._wal.pending_count == 0

    def close(self, timeout_s: float = 5.0) -> None:
        """Try to deliver the backlog for up to ``timeout_s``, then stop; what is left stays logged."""
        self.flush(timeout_s)
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            # a sender stuck connecting is a daemon thread and holds nothing the log needs
            thread.join(timeout=timeout_s + 1)
        self._wal.close()

    # -- sender thread ----------------------------------------------------------------------
    def _send_loop(self) -> None:
        sender: KafkaSender | None = None
        cursor = 0
        last_warning = 0.0
        while not self._stop.is_set():
            if sender is None:
                sender = self._connect()
                if sender is None:
                    if time.monotonic() - last_warning > _WARN_EVERY_SECONDS:
                        last_warning = time.monotonic()
                        log.warning(
                            "Kafka is not reachable (%s); %d events kept in the write-ahead log",
                            self._last_error,
                            self._wal.pending_count,
                        )
                    self._stop.wait(_RETRY_SECONDS)
                    continue
                cursor = self._wal.low_watermark
            if self._rewind.is_set():
                self._rewind.clear()
                sender.close(0)
                sender, self._connected = None, False
                continue
            batch = self._wal.pending(cursor, limit=_SEND_CHUNK)
            if not batch:
                with self._wake:
                    self._wake.wait(timeout=0.5)
                continue
            try:
                for record in batch:
                    future = sender.send(record.topic, key=record.key, value=record.value)
                    future.add_callback(self._on_ack, record.seq)
                    future.add_errback(self._on_error)
            except Exception as exc:  # the client raises many types; every one means "send again"
                self._on_error(exc)
                continue
            cursor = batch[-1].seq + 1
        if sender is not None:
            sender.close(5)

    def _connect(self) -> KafkaSender | None:
        try:
            sender = self._factory()
        except Exception as exc:  # unreachable brokers surface as several kafka-python errors
            self._connected, self._last_error = False, f"{type(exc).__name__}: {exc}"
            return None
        if self._last_error is not None:
            log.warning("Kafka is reachable again; replaying %d events", self._wal.pending_count)
        self._connected, self._last_error = True, None
        return sender

    def _on_ack(self, seq: int, _metadata: object) -> None:
        self._wal.ack(seq)

    def _on_error(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._connected = False
        self._rewind.set()

    def _sync_loop(self) -> None:
        # the size check runs here, off the request path, at the fsync cadence
        while not self._stop.wait(self._fsync_interval_s or 0.05):
            self._wal.sync()
            self._watch_size()


def open_producer(settings: Settings, wal_dir: Path) -> EventProducer:
    """A write-ahead log in ``wal_dir`` (bounds and fsync from ``gateway.wal``) and the producer that drains it."""
    wal_settings = settings.gateway.wal
    wal = WriteAheadLog(
        wal_dir,
        max_bytes=wal_settings.max_bytes,
        segment_bytes=wal_settings.segment_bytes,
        fsync_each=wal_settings.fsync_interval_ms == 0,
    )
    return EventProducer(
        wal,
        kafka_sender_factory(settings.kafka),
        fsync_interval_s=wal_settings.fsync_interval_ms / 1000,
        warn_fraction=wal_settings.warn_fraction,
    )
