"""The sink: Kafka's interactions and feedback topics into the worker's DuckDB file.

One consumer in the sink's group. On every partition assignment it seeks to the next offset that
DuckDB holds for that partition (offsets are stored in the same transaction as the rows), so a
crash between writing and any Kafka-side commit can neither lose nor double rows. Events that
fail validation go to the dead-letter topic with the reason (acknowledged by Kafka before the
batch commits), and are counted.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from feedback.errors import EventError
from feedback.events import decode_event
from feedback.settings import KafkaSettings
from feedback.store import DuckDBStore, Located

log = logging.getLogger(__name__)


@dataclass
class SinkStats:
    """Counters since the sink started."""

    batches: int = 0
    interactions: int = 0
    feedback: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


class _SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        pass  # every batch is committed to DuckDB before the next poll: nothing to flush

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._sink.seek_to_stored(assigned)


class Sink:
    """Consumes events into DuckDB until stopped."""

    def __init__(self, kafka: KafkaSettings, store: DuckDBStore, *, batch_max: int, poll_timeout_ms: int) -> None:
        self._kafka = kafka
        self._store = store
        self._batch_max = batch_max
        self._poll_timeout_ms = poll_timeout_ms
        self._stop = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._dead_letter: KafkaProducer | None = None
        self.stats = SinkStats()

    def _connect(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=self._kafka.bootstrap_servers,
            client_id=f"{self._kafka.client_id}-sink",
            group_id=self._kafka.consumer_group,
            enable_auto_commit=False,  # offsets live in DuckDB, committed with the rows
            auto_offset_reset="earliest",
            max_poll_records=self._batch_max,
            request_timeout_ms=max(self._kafka.request_timeout_ms, 30_000),
            bootstrap_timeout_ms=self._kafka.bootstrap_timeout_ms,
        )
        topics = self._kafka.topics
        consumer.subscribe([topics.interactions, topics.feedback], listener=_SeekToStoredOffsets(self))
        return consumer

    def seek_to_stored(self, partitions: Iterable[TopicPartition]) -> None:
        """Position each assigned partition at the offset after the last row DuckDB holds."""
        stored = self._store.committed_offsets()
        assert self._consumer is not None
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None:
                self._consumer.seek(tp, offset)

    def run(self) -> None:
        """Poll and write batches until ``stop`` is called."""
        self._consumer = self._connect()
        try:
            while not self._stop.is_set():
                polled = self._consumer.poll(timeout_ms=self._poll_timeout_ms, max_records=self._batch_max)
                if polled:
                    self.write(polled)
        finally:
            self._consumer.close(autocommit=False)
            if self._dead_letter is not None:
                self._dead_letter.close()

    def write(self, polled: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        """Decode one poll's records and commit them, with their offsets, in one transaction."""
        located: list[Located] = []
        dead: list[tuple[ConsumerRecord, str]] = []
        offsets: dict[tuple[str, int], int] = {}
        for tp, records in polled.items():
            for record in records:
                offsets[(tp.topic, tp.partition)] = record.offset + 1
                try:
                    event = decode_event(record.value)
                except EventError as exc:
                    dead.append((record, str(exc)))
                    continue
                located.append(Located(event, tp.topic, tp.partition, record.offset))
        if dead:
            self._send_dead_letters(dead)
        result = self._store.write_batch(located, offsets)
        self.stats.batches += 1
        self.stats.interactions += result.interactions_inserted
        self.stats.feedback += result.feedback_inserted
        self.stats.duplicates += result.duplicates
        self.stats.dead_lettered += len(dead)

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
            envelope = {
                "reason": reason,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "value": record.value.decode("utf-8", errors="replace"),
            }
            futures.append(
                self._dead_letter.send(
                    self._kafka.topics.dead_letter, key=record.key, value=json.dumps(envelope).encode()
                )
            )
        for future in futures:
            future.get(timeout=30)  # the batch commits only once Kafka holds every dead letter

    def stop(self) -> None:
        """Ask ``run`` to return after the current batch."""
        self._stop.set()
