"""The event producer against an in-memory fake of the Kafka client (pure unit tests).

The real client is exercised against the real broker in tests/integration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from feedback.events import FeedbackEvent
from feedback.producer import EventProducer, KafkaSender
from feedback.wal import WriteAheadLog


class FakeFuture:
    """Resolves at once, like a kafka-python future that already completed."""

    def __init__(self, error: Exception | None) -> None:
        self._error = error

    def add_callback(self, fn: Callable[..., Any], *args: Any) -> FakeFuture:
        if self._error is None:
            fn(*args, "metadata")
        return self

    def add_errback(self, fn: Callable[..., Any], *args: Any) -> FakeFuture:
        if self._error is not None:
            fn(*args, self._error)
        return self


class FakeKafka:
    """An in-memory stand-in for the broker: keeps what it accepted; can fail on demand."""

    def __init__(self) -> None:
        self.reachable = True
        self.failures_left = 0
        self.accepted: list[tuple[str, bytes, bytes]] = []
        self.lock = threading.Lock()

    def factory(self) -> KafkaSender:
        if not self.reachable:
            raise ConnectionError("no broker at fake:9092")
        return FakeSender(self)


class FakeSender:
    def __init__(self, kafka: FakeKafka) -> None:
        self._kafka = kafka

    def send(self, topic: str, *, key: bytes, value: bytes) -> FakeFuture:
        with self._kafka.lock:
            if self._kafka.failures_left:
                self._kafka.failures_left -= 1
                return FakeFuture(TimeoutError("request timed out"))
            self._kafka.accepted.append((topic, key, value))
        return FakeFuture(None)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def event(n: int) -> FeedbackEvent:
    return FeedbackEvent(feedback_id=f"f{n}", interaction_id=f"i{n}", rating=1 + n % 5)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def make_producer(tmp_path: Path, kafka: FakeKafka) -> EventProducer:
    wal = WriteAheadLog(tmp_path, max_bytes=10_000_000, segment_bytes=100_000, fsync_each=False)
    return EventProducer(wal, kafka.factory, fsync_interval_s=0.01)


def test_events_reach_kafka_in_order_and_leave_the_log(tmp_path: Path) -> None:
    kafka = FakeKafka()
    producer = make_producer(tmp_path, kafka)
    producer.start()
    for n in range(50):
        producer.publish("feedback", event(n))
    assert producer.flush(10)
    producer.close()
    assert [FeedbackEvent.model_validate_json(v).feedback_id for _, _, v in kafka.accepted] == [
        f"f{n}" for n in range(50)
    ]
    assert {k for _, k, _ in kafka.accepted} == {f"i{n}".encode() for n in range(50)}
    assert producer.health().pending_events == 0


def _values(kafka: FakeKafka) -> list[bytes]:
    return [v for _, _, v in kafka.accepted]


def test_unreachable_kafka_keeps_events_and_reports_it(tmp_path: Path) -> None:
    kafka = FakeKafka()
    kafka.reachable = False
    producer = make_producer(tmp_path, kafka)
    producer.start()
    for n in range(5):
        producer.publish("feedback", event(n))
    assert wait_for(lambda: producer.health().last_error is not None)
    health = producer.health()
    assert health.connected is False
    assert health.pending_events == 5
    assert health.last_error == "ConnectionError: no broker at fake:9092"
    kafka.reachable = True
    assert producer.flush(10)
    producer.close()
    assert [FeedbackEvent.model_validate_json(v).feedback_id for v in _values(kafka)] == ["f0", "f1", "f2", "f3", "f4"]
    assert producer.health().connected is True


def test_failed_sends_are_sent_again_nothing_lost(tmp_path: Path) -> None:
    kafka = FakeKafka()
    kafka.failures_left = 3
    producer = make_producer(tmp_path, kafka)
    producer.start()
    for n in range(20):
        producer.publish("feedback", event(n))
    assert producer.flush(10)
    producer.close()
    ids = [FeedbackEvent.model_validate_json(v).feedback_id for v in _values(kafka)]
    assert set(ids) == {f"f{n}" for n in range(20)}  # duplicates allowed, losses not


def test_a_restarted_producer_replays_what_the_log_holds(tmp_path: Path) -> None:
    down = FakeKafka()
    down.reachable = False
    first = make_producer(tmp_path, down)
    first.start()
    for n in range(3):
        first.publish("feedback", event(n))
    first.close(timeout_s=0.1)  # Kafka never came back: the events stay in the log

    kafka = FakeKafka()
    second = make_producer(tmp_path, kafka)
    second.start()
    assert second.flush(10)
    second.close()
    assert [FeedbackEvent.model_validate_json(v).feedback_id for v in _values(kafka)] == ["f0", "f1", "f2"]


def test_a_nearly_full_log_is_loud_and_measured(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kafka = FakeKafka()
    kafka.reachable = False
    wal = WriteAheadLog(tmp_path, max_bytes=4_000, segment_bytes=100_000, fsync_each=False)
    producer = EventProducer(wal, kafka.factory, fsync_interval_s=0.01, warn_fraction=0.5)
    warnings_before = REGISTRY.get_sample_value("flywheel_wal_near_full_warnings_total") or 0.0
    producer.start()
    for n in range(7):  # 254-byte frames: 1778 bytes, below half of 4000
        producer.publish("feedback", event(n))
    assert wait_for(lambda: REGISTRY.get_sample_value("flywheel_wal_pending_events") == 7)
    assert producer.health().wal_near_full is False
    for n in range(7, 15):  # 3810 bytes: above half, still below the bound
        producer.publish("feedback", event(n))
    assert wait_for(lambda: producer.health().wal_near_full)
    producer.close(timeout_s=0.1)
    assert REGISTRY.get_sample_value("flywheel_wal_near_full_warnings_total") == warnings_before + 1
    assert REGISTRY.get_sample_value("flywheel_wal_bytes") == wal.size_bytes
    loud = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(loud) == 1
    assert loud[0].getMessage().startswith(f"WRITE-AHEAD LOG NEARLY FULL: {wal.size_bytes} of 4000 bytes")
