"""The refresh lease: whoever owns the ``scheduler`` topic's only partition runs the scheduler.

Every worker joins one consumer group on the single-partition ``scheduler`` topic; Kafka's group
coordinator gives that partition to exactly one live member, and takes it away when the member
leaves or stops heartbeating (``session_timeout_ms``), handing it to another. Nothing is read
from the topic: its ownership is the lease. ``held`` is set while this process owns it.

A holder that loses the lease mid-refresh is not stopped (a refresh is keyed by its date in the
registry, so the next holder refuses to run the same date again): the lease decides who starts
refreshes, the registry decides that each date runs once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError

from feedback.consumer_group import group_consumer
from feedback.settings import KafkaSettings

log = logging.getLogger(__name__)

_RETRY_S = 2.0  # after the broker went away


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, held: threading.Event, name: str) -> None:
        self._held = held
        self._name = name

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        if self._held.is_set():
            log.info("%s: refresh lease lost", self._name)
        self._held.clear()

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if list(assigned):
            log.info("%s: refresh lease acquired", self._name)
            self._held.set()


class KafkaLease:
    """Holds the refresh lease while this process owns the scheduler topic's partition."""

    def __init__(self, kafka: KafkaSettings, *, name: str, session_timeout_ms: int, poll_ms: int = 1000) -> None:
        self.held = threading.Event()
        self._kafka = kafka
        self._name = name
        self._session_timeout_ms = session_timeout_ms
        self._poll_ms = poll_ms
        self._stop = threading.Event()

    @property
    def group(self) -> str:
        """The consumer group every worker's lease joins."""
        return f"{self._kafka.consumer_group}-scheduler"

    def run(self) -> None:
        """Take part in the lease until ``stop``; survives broker outages (the lease is lost meanwhile)."""
        while not self._stop.is_set():
            try:
                self._hold()
            except KafkaError as exc:
                self.held.clear()
                log.warning("%s: refresh lease unavailable, retrying: %s", self._name, exc)
                self._stop.wait(_RETRY_S)

    def _hold(self) -> None:
        consumer = group_consumer(
            [self._kafka.topics.scheduler],
            _Ownership(self.held, self._name),
            bootstrap_servers=self._kafka.bootstrap_servers,
            client_id=f"{self._kafka.client_id}-lease-{self._name}",
            group_id=self.group,
            enable_auto_commit=False,
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(1000, self._session_timeout_ms // 3),
            request_timeout_ms=max(self._kafka.request_timeout_ms, 30_000),
            bootstrap_timeout_ms=self._kafka.bootstrap_timeout_ms,
        )
        try:
            while not self._stop.is_set():
                consumer.poll(timeout_ms=self._poll_ms)  # keeps the membership; the topic stays empty
        finally:
            self.held.clear()
            consumer.close(autocommit=False)  # leaves the group: another worker takes over at once

    def stop(self) -> None:
        """Ask ``run`` to leave the group and return."""
        self._stop.set()
