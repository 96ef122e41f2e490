"""The sink against the real broker: good events land once, poison events are dead-lettered.

Good interactions, feedback and audit events are interleaved with poison records (not JSON,
wrong types, unknown schema versions, oversized, empty) on the same partitions; every good one
lands exactly once, every poison one is on the dead-letter topic and in ``dead_letters`` with
its reason, and the counters say so exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from pipeline_events import audit, feedback, interaction, run_in_thread, wait_until

from feedback.settings import KafkaSettings
from feedback.store import DuckDBStore
from services.worker.sink import Sink
from services.worker.status import EndOffsets, sink_status

MAX_EVENT_BYTES = 4096


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "sink.duckdb")
    yield s
    s.close()


def produce(kafka: KafkaSettings, records: list[tuple[str, bytes, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", max_request_size=1 << 20)
    try:
        for topic, key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush(30)
    finally:
        producer.close()


def poison(good: bytes) -> dict[str, bytes | None]:
    data = json.loads(good)
    wrong_type = data | {"prompt_tokens": "many"}
    future = data | {"schema_version": 2}
    future_shape = {"schema_version": 3, "type": "interaction", "payload": "new"}
    huge = data | {"completion": "x" * (MAX_EVENT_BYTES + 100)}
    return {
        "not-json": b"{not json",
        "wrong-type": json.dumps(wrong_type).encode(),
        "unknown-version": json.dumps(future).encode(),
        "unknown-shape": json.dumps(future_shape).encode(),
        "oversized": json.dumps(huge).encode(),
        "empty": None,
    }


def test_poison_events_are_dead_lettered_while_good_ones_flow(
    kafka_isolated: KafkaSettings, store: DuckDBStore
) -> None:
    topics = kafka_isolated.topics
    records: list[tuple[str, bytes, bytes | None]] = []
    for n in range(60):
        event = interaction(n)
        records.append((topics.interactions, event.kafka_key(), event.encode()))
        if n % 10 == 0:  # a burst of poison between good events on the same partitions
            for value in poison(event.encode()).values():
                records.append((topics.interactions, event.kafka_key(), value))
        if n % 3 == 0:
            records.append((topics.feedback, event.kafka_key(), feedback(n).encode()))
    for n in range(7):
        event = audit(n)
        records.append((topics.audit, event.kafka_key(), event.encode()))
    records.append((topics.feedback, b"k", json.dumps({"schema_version": 1, "type": "feedback"}).encode()))
    produce(kafka_isolated, records)

    sink = Sink(kafka_isolated, store, batch_max=25, poll_timeout_ms=100, max_event_bytes=MAX_EVENT_BYTES)
    thread = run_in_thread(sink.run, "sink")
    try:
        wait_until(lambda: sink.stats.interactions + sink.stats.dead_lettered + sink.stats.feedback >= 60 + 37 + 20)
        wait_until(lambda: sink.stats.audit == 7, what="audit events")
    finally:
        sink.stop()
        thread.join(timeout=60)

    assert store.query("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM interactions") == [{"n": 60, "d": 60}]
    assert store.query("SELECT count(*) AS n FROM feedback") == [{"n": 20}]
    assert store.query("SELECT actor, action, details FROM audit ORDER BY resource LIMIT 1") == [
        {"actor": "admin", "action": "deployment.ramp", "details": '{"to":10}'}
    ]
    reasons = store.query(
        "SELECT split_part(reason, ':', 1) AS kind, count(*) AS n FROM dead_letters GROUP BY 1 ORDER BY 1"
    )
    assert reasons == [
        {"kind": "invalid", "n": 19},  # 6 x (not JSON, wrong type, empty) + 1 feedback without fields
        {"kind": "oversized", "n": 6},
        {"kind": "unknown-schema", "n": 12},
    ]
    assert sink.stats.dead_lettered == 37
    assert sink.stats.dead_letter_reasons == {"invalid": 19, "oversized": 6, "unknown-schema": 12}
    assert (sink.stats.interactions, sink.stats.feedback, sink.stats.audit, sink.stats.duplicates) == (60, 20, 7, 0)

    letters = read_dead_letters(kafka_isolated, 37)
    assert len(letters) == 37
    assert sorted({letter["reason"].split(":")[0] for letter in letters}) == ["invalid", "oversized", "unknown-schema"]
    wrong = [letter for letter in letters if "prompt_tokens" in letter["reason"]]
    assert len(wrong) == 6
    assert (
        wrong[0]["reason"]
        == "invalid: interaction.prompt_tokens: Input should be a valid integer, unable to parse string as an integer"
    )
    oversized = next(letter for letter in letters if letter["reason"].startswith("oversized"))
    assert (
        oversized["reason"] == f"oversized: {oversized['size_bytes']} bytes, more than the limit of {MAX_EVENT_BYTES}"
    )

    ends_of = EndOffsets(kafka_isolated)
    try:
        status = sink_status(ends_of, sink.topics, store, sink.stats)
    finally:
        ends_of.close()
    assert status.total_lag == 0
    assert status.rows == {"interactions": 60, "feedback": 20, "audit": 7}
    assert status.dead_lettered == 37
    assert sum(p.end or 0 for p in status.partitions) == len(records)


def read_dead_letters(kafka: KafkaSettings, expected: int) -> list[dict[str, object]]:
    consumer = KafkaConsumer(
        kafka.topics.dead_letter,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=5000,
    )
    try:
        out: list[dict[str, object]] = []
        for record in consumer:
            out.append(json.loads(record.value))
            if len(out) >= expected:
                break
        return out
    finally:
        consumer.close()


def test_status_reports_lag_before_the_sink_reads(kafka_isolated: KafkaSettings, store: DuckDBStore) -> None:
    topics = kafka_isolated.topics
    produce(kafka_isolated, [(topics.interactions, b"same-key", interaction(n).encode()) for n in range(5)])
    sink = Sink(kafka_isolated, store, batch_max=10, poll_timeout_ms=100)
    ends_of = EndOffsets(kafka_isolated)
    try:
        status = sink_status(ends_of, sink.topics, store, sink.stats)
        again = sink_status(ends_of, sink.topics, store, sink.stats)  # the same client, asked again
        ends_of.close()
        reopened = sink_status(ends_of, sink.topics, store, sink.stats)  # a new client after close
    finally:
        ends_of.close()
    assert again == reopened == status
    assert status.total_lag == 5
    lagging = [p for p in status.partitions if p.lag]
    assert [(p.topic, p.committed, p.end, p.lag) for p in lagging] == [(topics.interactions, None, 5, 5)]
    assert len(status.partitions) == 6  # 3 topics x 2 partitions
    assert status.rows == {"interactions": 0, "feedback": 0, "audit": 0}
    assert status.last_commit is None
