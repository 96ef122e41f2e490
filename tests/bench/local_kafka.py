"""A real local Kafka broker for the benchmarks, and topics of a run's own on it.

Kept apart from the benchmarks that use it so that importing it is light (no model, no torch).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kafka import KafkaProducer

from feedback.settings import KafkaSettings, LocalKafkaSettings, TopicSettings
from feedback.topics import ensure_topics
from services.cli import broker
from services.cli.ports import free_port


@contextmanager
def local_broker() -> Iterator[KafkaSettings]:
    """A broker on free ports in a temporary directory, stopped at the end."""
    with tempfile.TemporaryDirectory() as data:
        local = LocalKafkaSettings(port=free_port(), controller_port=free_port(), data_dir=Path(data), heap="1g")
        started = broker.run_script("start", local, capture=True)
        try:
            if started.returncode != 0:
                raise RuntimeError(started.stdout + started.stderr)
            yield KafkaSettings(bootstrap_servers=f"127.0.0.1:{local.port}", local=local)
        finally:
            broker.run_script("stop", local, capture=True)


def fresh_topics(kafka: KafkaSettings, partitions: int = 3) -> KafkaSettings:
    """Topics and a consumer group of their own (3 partitions by default, as in production defaults)."""
    suffix = uuid.uuid4().hex[:8]
    names = {f: f"{d}-{suffix}" for f, d in TopicSettings().model_dump().items() if isinstance(d, str)}
    topics = TopicSettings(**names, partitions=partitions)
    isolated = kafka.model_copy(update={"topics": topics, "consumer_group": f"sink-{suffix}"})
    ensure_topics(isolated)
    return isolated


def fill(kafka: KafkaSettings, count: int) -> None:
    """``count`` realistic interactions on the interactions topic, lz4-compressed as the gateway sends them."""
    from pipeline_events import interaction  # tests/ is on the path of the benchmarks that fill topics

    producer = KafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        compression_type="lz4",
    )
    for n in range(count):
        event = interaction(n)
        producer.send(kafka.topics.interactions, key=event.kafka_key(), value=event.encode())
    producer.flush(120)
    producer.close()
