"""A real local Kafka broker for the benchmarks, and topics of a run's own on it.

Kept apart from the benchmarks that use it so that importing it is light (no model, no torch).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def fresh_topics(kafka: KafkaSettings) -> KafkaSettings:
    """Topics and a consumer group of their own (3 partitions, as in production defaults)."""
    suffix = uuid.uuid4().hex[:8]
    names = {f: f"{d}-{suffix}" for f, d in TopicSettings().model_dump().items() if isinstance(d, str)}
    isolated = kafka.model_copy(update={"topics": TopicSettings(**names), "consumer_group": f"sink-{suffix}"})
    ensure_topics(isolated)
    return isolated
