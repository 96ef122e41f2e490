"""The sink: Kafka's interactions, feedback and audit topics into the worker's DuckDB file.

One consumer in the sink's group. On every partition assignment it seeks to the next offset that
DuckDB holds for that partition (offsets are stored in the same transaction as the rows), so a
crash between writing and any Kafka-side commit can neither lose nor double rows. A record that
is too large, is not JSON, fails its schema or carries an unknown schema version goes to the
dead-letter topic with the reason (acknowledged by Kafka before the batch commits), is recorded
in DuckDB's ``dead_letters`` table in the batch's transaction, and is counted; the good records
around it keep flowing.

Sink shards (``services.worker.checkpoints``) also commit to Kafka the offsets the lake holds,
and on assignment resume at the group's commit unless their own DuckDB is ahead of it.

Speed: events are validated by msgspec structs generated from the pydantic schema
(``feedback.codec``), written as JSON columns that DuckDB parses outside the GIL
(``feedback.ingest``), and the next batch is fetched from Kafka while the current one is written.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from feedback.codec import decode_fast
from feedback.consumer_group import group_consumer
from feedback.errors import EventError, UnknownSchemaError
from feedback.ingest import EventBatch
from feedback.settings import KafkaSettings
from feedback.store import DeadLetter, DuckDBStore

if TYPE_CHECKING:
    from services.worker.checkpoints import KafkaCheckpoints

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
DEFAULT_FETCH_MAX_BYTES = 16 * 1024 * 1024
_DEAD_LETTER_VALUE_BYTES = 512 * 1024  # a refused value is kept up to this size, so its envelope fits the topic


@dataclass
class SinkStats:
    """Counters since the sink started."""

    batches: int = 0
    interactions: int = 0
    feedback: int = 0
    audit: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)  # by class: invalid, oversized...
    last_commit: str | None = None  # ISO time of the last committed batch


@dataclass
class Decoded:
    """One poll's records, validated: the events to write and the refused records with reasons."""

    batch: EventBatch = field(default_factory=EventBatch)
    dead: list[tuple[ConsumerRecord, str]] = field(default_factory=list)


class _SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._sink.wait_for_commit()  # the batch being written lands before another sink may read on

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._sink.wait_for_commit()
        self._sink.seek_to_stored(assigned)


class Sink:
    """Consumes events into DuckDB until stopped."""

    def __init__(
        self,
        kafka: KafkaSettings,
        store: DuckDBStore,
        *,
        batch_max: int,
        poll_timeout_ms: int,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
        session_timeout_ms: int = 45_000,
        checkpoints: KafkaCheckpoints | None = None,
    ) -> None:
        """``checkpoints``: this sink is one shard of several in its group (None: the only sink)."""
        self._kafka = kafka
        self._store = store
        self._batch_max = batch_max
        self._poll_timeout_ms = poll_timeout_ms
        self._max_event_bytes = max_event_bytes
        self._fetch_max_bytes = fetch_max_bytes
        self._session_timeout_ms = session_timeout_ms
        self.checkpoints = checkpoints
        self._stop = threading.Event()
        self._writing = threading.Lock()  # held while a batch is written and committed
        self._consumer: KafkaConsumer | None = None
        self._dead_letter: KafkaProducer | None = None
        self._reasons: Counter[str] = Counter()
        self.stats = SinkStats()

    @property
    def topics(self) -> list[str]:
        """The topics the sink consumes."""
        topics = self._kafka.topics
        return [topics.interactions, topics.feedback, topics.audit]

    def _connect(self) -> KafkaConsumer:
        return group_consumer(
            self.topics,
            _SeekToStoredOffsets(self),
            bootstrap_servers=self._kafka.bootstrap_servers,
            client_id=f"{self._kafka.client_id}-sink",
            group_id=self._kafka.consumer_group,
            enable_auto_commit=False,  # offsets live in DuckDB, committed with the rows
            auto_offset_reset="earliest",
            max_poll_records=self._batch_max,
            # large fetches: fewer round trips, and an oversized record is still fetched so it
            # can be dead-lettered instead of stalling its partition
            max_partition_fetch_bytes=max(self._fetch_max_bytes, self._max_event_bytes * 2),
            fetch_max_bytes=max(self._fetch_max_bytes * 4, self._max_event_bytes * 2),
            request_timeout_ms=max(self._kafka.request_timeout_ms, 30_000),
            bootstrap_timeout_ms=self._kafka.bootstrap_timeout_ms,
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=min(3000, self._session_timeout_ms // 3),
        )

    def seek_to_stored(self, partitions: Iterable[TopicPartition]) -> None:
        """Position each assigned partition at the offset after the last row DuckDB holds.

        A shard does so only where that is ahead of the group's commit on Kafka; elsewhere it
        resumes at the commit (another shard owned the partition meanwhile).
        """
        partitions = list(partitions)
        stored = self._store.committed_offsets()
        group = self.checkpoints.committed(partitions) if self.checkpoints is not None else {}
        assert self._consumer is not None
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None and offset > group.get((tp.topic, tp.partition), -1):
                self._consumer.seek(tp, offset)

    def run(self) -> None:
        """Poll and write batches until ``stop`` is called.

        Every call on the consumer is made on one thread of its own (kafka-python's consumer is
        not thread-safe), which fetches and validates the next batch while this thread writes the
        current one; DuckDB parses and writes outside Python's GIL, so the two overlap.
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-kafka") as kafka:
            self._consumer = kafka.submit(self._connect).result()
            try:
                pending = kafka.submit(self._fetch)
                while not self._stop.is_set():
                    decoded = pending.result()
                    with self._writing:  # a rebalance during the next poll waits for this commit
                        pending = kafka.submit(self._fetch)
                        if decoded is not None:
                            self._commit(decoded)
            finally:  # after the poll in flight, whose records are read again at the next start
                kafka.submit(self._leave).result()
                if self._dead_letter is not None:
                    self._dead_letter.close()

    def _leave(self) -> None:
        assert self._consumer is not None
        if self.checkpoints is not None:
            self.checkpoints.commit_final(self._consumer)
            self.checkpoints.close()
        self._consumer.close(autocommit=False)

    def _fetch(self) -> Decoded | None:
        assert self._consumer is not None
        if self.checkpoints is not None:
            self.checkpoints.commit_pending(self._consumer)
        polled = self._consumer.poll(timeout_ms=self._poll_timeout_ms, max_records=self._batch_max)
        return self.decode(polled) if polled else None

    def wait_for_commit(self) -> None:
        """Block until the batch being written (if any) is committed with its offsets."""
        with self._writing:
            pass

    def write(self, polled: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        """Decode one poll's records and commit them, with their offsets, in one transaction."""
        self._commit(self.decode(polled))

    def decode(self, polled: Mapping[TopicPartition, list[ConsumerRecord]]) -> Decoded:
        """Validate one poll's records into a batch of events and a list of refusals."""
        decoded = Decoded()
        for tp, records in polled.items():
            for record in records:
                reason = self._refusal(record)
                if reason is None:
                    try:
                        decoded.batch.add(*decode_fast(record.value), tp.partition, record.offset)
                        continue
                    except UnknownSchemaError as exc:
                        reason = f"unknown-schema: {exc}"
                    except EventError as exc:
                        reason = f"invalid: {exc}"
                decoded.dead.append((record, reason))
            if records:
                decoded.batch.advance(tp.topic, tp.partition, records[-1].offset + 1)
        return decoded

    def _commit(self, decoded: Decoded) -> None:
        dead = decoded.dead
        if dead:
            self._send_dead_letters(dead)
        letters = [DeadLetter(r.topic, r.partition, r.offset, reason, len(r.value or b"")) for r, reason in dead]
        result = self._store.write_events(decoded.batch, dead=letters)
        self._count(result.interactions_inserted, result.feedback_inserted, result.audit_inserted, result.duplicates)
        self.stats.dead_lettered += result.dead_lettered
        for _record, reason in dead:
            self._reasons[reason.split(":", 1)[0]] += 1
        self.stats.dead_letter_reasons = dict(self._reasons)

    def _refusal(self, record: ConsumerRecord) -> str | None:
        if record.value is None:
            return "invalid: empty record (no value)"
        size = len(record.value)
        if size > self._max_event_bytes:
            return f"oversized: {size} bytes, more than the limit of {self._max_event_bytes}"
        return None

    def _count(self, interactions: int, feedback: int, audit: int, duplicates: int) -> None:
        self.stats.batches += 1
        self.stats.interactions += interactions
        self.stats.feedback += feedback
        self.stats.audit += audit
        self.stats.duplicates += duplicates
        self.stats.last_commit = datetime.now(UTC).isoformat()

    def _send_dead_letters(self, dead: list[tuple[ConsumerRecord, str]]) -> None:
        if self._dead_letter is None:
            self._dead_letter = KafkaProducer(
                bootstrap_servers=self._kafka.bootstrap_servers,
                client_id=f"{self._kafka.client_id}-dead-letter",
                acks="all",
            )
        futures = []
        for record, reason in dead:
            log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
            futures.append(
                self._dead_letter.send(self._kafka.topics.dead_letter, key=record.key, value=_envelope(record, reason))
            )
        for future in futures:
            future.get(timeout=30)  # the batch commits only once Kafka holds every dead letter

    def stop(self) -> None:
        """Ask ``run`` to return after the current batch."""
        self._stop.set()


def _envelope(record: ConsumerRecord, reason: str) -> bytes:
    """The dead letter: where the record was, why it was refused, and (up to a bound) its bytes."""
    value = record.value or b""
    envelope = {
        "reason": reason,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "size_bytes": len(value),
        "value": value[:_DEAD_LETTER_VALUE_BYTES].decode("utf-8", errors="replace"),
        "truncated": len(value) > _DEAD_LETTER_VALUE_BYTES,
    }
    return json.dumps(envelope).encode()
