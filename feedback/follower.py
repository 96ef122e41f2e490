"""Following a compacted single-partition control topic (``deployments``, ``keys``).

A control topic keeps the latest record per key; every process that needs the state reads it
from the start in a thread (:class:`TopicFollower`) and keeps reading, so all replicas agree
without a shared database. :func:`publish_record` writes one record and waits for the broker;
:func:`read_topic` reads the whole topic once (the CLI's view).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from feedback.errors import KafkaUnavailableError
from feedback.settings import KafkaSettings

log = logging.getLogger(__name__)

_RETRY_SECONDS = 2.0  # wait between reconnection attempts
_WARN_EVERY_SECONDS = 60.0  # how often an outage is logged again
_POLL_MS = 200  # longest wait for a new record: bounds how late a change is seen, milliseconds


def publish_record(kafka: KafkaSettings, topic: str, key: bytes, value: bytes) -> None:
    """Write one record to ``topic`` and wait for the broker's acknowledgement, or raise KafkaUnavailableError."""
    try:
        producer = KafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-{topic}",
            acks="all",
            request_timeout_ms=kafka.request_timeout_ms,
            bootstrap_timeout_ms=kafka.bootstrap_timeout_ms,  # an unreachable broker fails the change soon
        )
    except KafkaError as exc:
        raise KafkaUnavailableError(f"Kafka at {kafka.bootstrap_servers} is not reachable: {exc}") from exc
    try:
        producer.send(topic, key=key, value=value).get(timeout=kafka.request_timeout_ms / 1000)
    except KafkaError as exc:
        raise KafkaUnavailableError(f"publishing to {topic} failed: {exc}") from exc
    finally:
        producer.close(timeout=5)


def _consumer(kafka: KafkaSettings, topic: str) -> tuple[KafkaConsumer, TopicPartition, int]:
    """A consumer at the start of the topic's one partition, and the partition's end offset."""
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-{topic}-watch",
        enable_auto_commit=False,
        request_timeout_ms=max(kafka.request_timeout_ms, 11_000),
        bootstrap_timeout_ms=kafka.bootstrap_timeout_ms,
    )
    partition = TopicPartition(topic, 0)
    try:
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        return consumer, partition, consumer.end_offsets([partition])[partition]
    except BaseException:
        consumer.close()
        raise


def read_topic(kafka: KafkaSettings, topic: str) -> dict[bytes, bytes]:
    """The latest value per key of the whole topic (deleted keys left out), or KafkaUnavailableError."""
    latest: dict[bytes, bytes] = {}
    try:
        consumer, partition, end = _consumer(kafka, topic)
        try:
            while consumer.position(partition) < end:
                for records in consumer.poll(timeout_ms=_POLL_MS).values():
                    for record in records:
                        if record.key is not None and record.value is not None:
                            latest[record.key] = record.value
                        elif record.key is not None:
                            latest.pop(record.key, None)
        finally:
            consumer.close()
    except KafkaError as exc:
        raise KafkaUnavailableError(f"reading {topic} from {kafka.bootstrap_servers} failed: {exc}") from exc
    return latest


class TopicFollower(ABC):
    """Follows one control topic in a thread from its start; :meth:`receive` gets every record in order."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self._kafka = kafka
        self._topic = topic
        self._stop = threading.Event()
        self.caught_up = threading.Event()  # set once the topic was read to its end (or found unreachable)
        self._thread = threading.Thread(target=self._run, name=topic, daemon=True)

    @abstractmethod
    def receive(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record (called on the follower's thread, in topic order)."""

    def describe(self) -> str:
        """What the follower holds, for the outage warning."""
        return "the last state"

    def start(self) -> None:
        """Start following the topic."""
        self._thread.start()

    def close(self) -> None:
        """Stop following and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        warned_at = float("-inf")
        while not self._stop.is_set():
            try:
                self._follow()
            except KafkaError as exc:  # the broker went away; keep the last state and retry
                if time.monotonic() - warned_at > _WARN_EVERY_SECONDS:
                    log.warning("%s topic unreachable, keeping %s: %s", self._topic, self.describe(), exc)
                    warned_at = time.monotonic()
                self.caught_up.set()  # serve with what we have rather than not at all
                self._stop.wait(_RETRY_SECONDS)

    def _follow(self) -> None:
        consumer, partition, end = _consumer(self._kafka, self._topic)
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=_POLL_MS).values():
                    for record in records:
                        self.receive(record.key, record.value)
                if consumer.position(partition) >= end:
                    self.caught_up.set()
        finally:
            consumer.close()
