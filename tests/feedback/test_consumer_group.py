"""A consumer keeps its partitions through a rebalance that outlasts a poll (real broker).

Partitions are added to a topic the group consumes, so the leader rebalances on the new metadata;
every SyncGroup answer is held back longer than a poll's timeout, so each rebalance straddles at
least one poll. Without the guard of ``feedback.consumer_group`` kafka-python 3.0.12 drops that
rebalance's assignment and the consumer holds nothing from then on; with it, the consumer is
assigned every partition and reads the records written to the new one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewPartitions, NewTopic

from feedback.consumer_group import group_consumer
from feedback.settings import KafkaSettings

POLL_MS = 100
SYNC_DELAY_S = 0.4  # longer than a poll: every rebalance is still in flight when its poll gives up


@pytest.fixture
def topic(kafka: KafkaSettings) -> Iterator[str]:
    name = f"group-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name, 1, 1)])
        admin.wait_for_topics([name], timeout_ms=30_000)
        yield name
    finally:
        admin.close()


def hold_back_sync_group(consumer: KafkaConsumer) -> None:
    """Fault injection: every SyncGroup request waits ``SYNC_DELAY_S`` on the client's IO loop."""
    manager = consumer._coordinator._manager
    send = manager.send

    def slow_send(request: Any, *args: Any, **kwargs: Any) -> Any:
        if type(request).__name__ != "SyncGroupRequest":
            return send(request, *args, **kwargs)

        async def later() -> Any:
            await manager._net.sleep(SYNC_DELAY_S)
            return await send(request, **kwargs)

        return later()

    manager.send = slow_send


def poll_until(consumer: KafkaConsumer, done: Any, timeout_s: float) -> list[Any]:
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while not done(consumer, records) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=POLL_MS).values():
            records.extend(batch)
    return records


def test_partitions_added_while_polling_are_assigned_and_read(kafka: KafkaSettings, topic: str) -> None:
    consumer = group_consumer(
        [topic],
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"group-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=500,  # notice the new partition quickly
    )
    hold_back_sync_group(consumer)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        poll_until(consumer, lambda c, _: c.assignment() == {TopicPartition(topic, 0)}, 60)
        assert consumer.assignment() == {TopicPartition(topic, 0)}

        admin.create_partitions({topic: NewPartitions(total_count=2)})
        producer.send(topic, value=b"on the new partition", partition=1).get(timeout=30)

        records = poll_until(consumer, lambda _, got: len(got) == 1, 60)
        assert consumer.assignment() == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
        assert [(r.partition, r.value) for r in records] == [(1, b"on the new partition")]
    finally:
        consumer.close(autocommit=False)
        producer.close()
        admin.close()
