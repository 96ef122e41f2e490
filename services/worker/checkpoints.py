"""A sink shard's offsets on Kafka: the group's committed offsets, and commits of what the lake holds.

A single sink keeps its offsets in DuckDB alone. Sink shards (several sink processes in one
consumer group, each with its own DuckDB file) also commit to Kafka, because a partition that
moves to another shard must resume where the previous owner's rows end, and the new owner's
DuckDB knows nothing of it. A shard commits an offset only once the lake holds every record
before it (``feedback.lake``: an export returns the offsets its store held before it read the
rows), so a shard that dies, disk and all, loses nothing: the next owner resumes at the last
commit and writes again what the lake may hold already, which the analyst views deduplicate.

When a shard stops it exports everything it stored and commits that before it leaves the group,
so the next owner resumes exactly where it stopped. On assignment a shard seeks to the offset
DuckDB holds only when that is ahead of the group's commit (its own rows not yet in the lake);
otherwise it resumes at the commit, past what another shard wrote meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from feedback.errors import FlywheelError
from feedback.settings import KafkaSettings

log = logging.getLogger(__name__)

Offsets = Mapping[tuple[str, int], int]  # (topic, partition) -> the next offset to read


class KafkaCheckpoints:
    """Commits of what the lake holds, made on the sink's Kafka thread; lookups of the group's commits.

    ``flush`` exports every stored row to the lake and returns the offsets the lake then holds.
    """

    def __init__(self, kafka: KafkaSettings, flush: Callable[[], Offsets]) -> None:
        self._kafka = kafka
        self._flush = flush
        self._lock = threading.Lock()  # the lake thread queues, the Kafka and IO threads commit and look up
        self._pending: dict[tuple[str, int], int] = {}
        self._known: dict[tuple[str, int], int] = {}  # the group's commit as last seen or made
        self._admin: KafkaAdminClient | None = None

    def lake_holds(self, offsets: Offsets) -> None:
        """Queue ``offsets`` (the lake holds every record before them) for the next commit."""
        with self._lock:
            self._pending.update(offsets)

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[tuple[str, int], int]:
        """The group's committed offsets of ``partitions``; empty, with a warning, when Kafka does not answer."""
        group = self._kafka.consumer_group
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(
                    bootstrap_servers=self._kafka.bootstrap_servers,
                    client_id=f"{self._kafka.client_id}-sink-offsets",
                    request_timeout_ms=self._kafka.request_timeout_ms,
                )
            found = self._admin.list_group_offsets({group: list(partitions)}).get(group, {})
        except KafkaError as exc:  # seeking to DuckDB's offsets alone is safe: at worst rows are read twice
            log.warning("the group's committed offsets are unknown (%s); resuming from this shard's own", exc)
            return {}
        offsets = {(tp.topic, tp.partition): int(meta.offset) for tp, meta in found.items() if meta.offset >= 0}
        with self._lock:
            self._known.update(offsets)
        return offsets

    def commit_pending(self, consumer: KafkaConsumer) -> None:
        """Commit, without waiting, the queued offsets of partitions this shard owns that move the group's ahead."""
        with self._lock:
            pending, self._pending = self._pending, {}
            offsets = self._ahead(consumer, pending)
        if offsets:
            consumer.commit_async(offsets, callback=self._committed)

    def commit_final(self, consumer: KafkaConsumer) -> None:
        """Export every stored row, then commit what the lake holds, before the shard leaves the group."""
        try:
            flushed = self._flush()
            with self._lock:
                offsets = self._ahead(consumer, flushed)
            if offsets:
                consumer.commit(offsets)
                self._committed(offsets, None)
        except (FlywheelError, OSError, KafkaError) as exc:  # the next owner resumes at the last commit instead
            log.warning("this shard's final offsets were not committed: %s", exc)

    def close(self) -> None:
        """Close the lookup client."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def _ahead(self, consumer: KafkaConsumer, offsets: Offsets) -> dict[TopicPartition, OffsetAndMetadata]:
        owned = consumer.assignment()
        return {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in offsets.items()
            if TopicPartition(topic, partition) in owned and offset > self._known.get((topic, partition), -1)
        }

    def _committed(self, offsets: Mapping[TopicPartition, OffsetAndMetadata], error: Any) -> None:
        if isinstance(error, Exception):  # a rebalance under way, say: the next export queues them again
            log.info("offsets not committed (%s); the next export retries", error)
            return
        with self._lock:
            for tp, meta in offsets.items():
                key = (tp.topic, tp.partition)
                self._known[key] = max(self._known.get(key, -1), int(meta.offset))
