"""The sink's status: lag per partition (Kafka end offsets vs offsets stored in DuckDB), rows, dead letters.

The committed side is read from the worker's own DuckDB connection (a cursor beside the sink),
the end side from Kafka with a consumer outside the sink's group (:class:`EndOffsets`), so asking
for the status never disturbs the group or opens the DuckDB file a second time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from feedback.settings import KafkaSettings
from feedback.store import DuckDBStore
from services.worker.protocol import PartitionLag, SinkStatus
from services.worker.sink import SinkStats

_COUNTS_SQL = """
SELECT (SELECT count(*) FROM interactions) AS interactions,
       (SELECT count(*) FROM feedback) AS feedback,
       (SELECT count(*) FROM audit) AS audit,
       (SELECT count(*) FROM dead_letters) AS dead_letters,
       (SELECT strftime(max(committed_at), '%Y-%m-%dT%H:%M:%S.%f%z') FROM kafka_offsets) AS last_commit
"""


EndsOf = Callable[[list[str]], dict[tuple[str, int], int]]  # topics -> end offset per (topic, partition)


class EndOffsets:
    """Kafka's end offsets through one client kept between calls.

    The metrics endpoint asks on every scrape, so a client per call would mean a connection and a
    metadata round trip each time. A failed call closes the client; the next call opens a new one.
    """

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._consumer: KafkaConsumer | None = None
        self._lock = threading.Lock()  # the status route and a metrics scrape may ask at once

    def __call__(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """The end offset of every partition of ``topics``; raises KafkaError when Kafka does not answer."""
        with self._lock:
            if self._consumer is None:
                self._consumer = KafkaConsumer(
                    bootstrap_servers=self._kafka.bootstrap_servers,
                    client_id=f"{self._kafka.client_id}-status",
                    group_id=None,  # outside the sink's group: no rebalance
                    request_timeout_ms=self._kafka.request_timeout_ms,
                    bootstrap_timeout_ms=self._kafka.bootstrap_timeout_ms,
                )
            consumer = self._consumer
            try:
                partitions = [
                    TopicPartition(topic, p)
                    for topic in topics
                    for p in sorted(consumer.partitions_for_topic(topic) or ())
                ]
                ends = consumer.end_offsets(partitions)
            except KafkaError:
                self._close()
                raise
            return {(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}

    def close(self) -> None:
        """Close the client (a later call opens a new one)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def partition_lags(ends_of: EndsOf, topics: list[str], store: DuckDBStore) -> tuple[list[PartitionLag], str | None]:
    """Lag of every partition of ``topics``, and why Kafka's end offsets are unknown (None when they are known)."""
    committed = {key: offset for key, offset in store.committed_offsets().items() if key[0] in topics}
    error: str | None = None
    try:
        ends = ends_of(topics)
    except KafkaError as exc:
        ends, error = {}, f"{type(exc).__name__}: {exc}"
    partitions = []
    for topic, partition in sorted(set(ends) | set(committed)):
        end, done = ends.get((topic, partition)), committed.get((topic, partition))
        lag = None if end is None else end - (done or 0)
        partitions.append(PartitionLag(topic=topic, partition=partition, committed=done, end=end, lag=lag))
    return partitions, error


def sink_status(ends_of: EndsOf, topics: list[str], store: DuckDBStore, stats: SinkStats) -> SinkStatus:
    """Lag per partition, rows per table, dead letters and the last commit."""
    partitions, error = partition_lags(ends_of, topics, store)
    counts = store.query(_COUNTS_SQL)[0]
    return SinkStatus(
        partitions=partitions,
        total_lag=None if error else sum(p.lag or 0 for p in partitions),
        rows={name: int(counts[name]) for name in ("interactions", "feedback", "audit")},
        dead_lettered=int(counts["dead_letters"]),
        dead_letter_reasons=dict(stats.dead_letter_reasons),
        last_commit=counts["last_commit"],
        kafka_error=error,
    )
