"""The project's Kafka topics, and creating them on a broker.

``interactions``, ``feedback`` and ``audit`` carry data and are partitioned by interaction id;
``deployments`` and ``keys`` are compacted (the latest record per key is the state every gateway
applies: the deployment, and each API key's record);
``scheduler`` has one partition, whose ownership is the refresh lease; ``dead-letter`` keeps what
the sink refused, longer than the data topics.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from feedback.errors import KafkaUnavailableError
from feedback.settings import KafkaSettings

_HOUR_MS = 3_600_000


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the project wants it."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(kafka: KafkaSettings) -> list[TopicSpec]:
    """Every topic the project uses, with partitions and retention from settings."""
    t = kafka.topics
    every = {"min.insync.replicas": str(t.min_insync_replicas)}
    data = every | {"retention.ms": str(t.retention_hours * _HOUR_MS)}
    compacted = every | {"cleanup.policy": "compact"}
    return [
        TopicSpec(t.interactions, t.partitions, t.replication_factor, data),
        TopicSpec(t.feedback, t.partitions, t.replication_factor, data),
        TopicSpec(t.audit, t.partitions, t.replication_factor, data),
        TopicSpec(t.deployments, 1, t.replication_factor, compacted),
        TopicSpec(t.keys, 1, t.replication_factor, compacted),
        TopicSpec(t.scheduler, 1, t.replication_factor, data),
        TopicSpec(
            t.dead_letter,
            t.partitions,
            t.replication_factor,
            every | {"retention.ms": str(t.dead_letter_retention_hours * _HOUR_MS)},
        ),
    ]


def ensure_topics(kafka: KafkaSettings) -> list[str]:
    """Create the project's topics that do not exist yet; return the names created."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-admin",
            request_timeout_ms=kafka.request_timeout_ms,
        )
    except KafkaError as exc:
        raise KafkaUnavailableError(f"Kafka at {kafka.bootstrap_servers} is not reachable: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [s for s in topic_specs(kafka) if s.name not in existing]
        new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config) for s in missing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created them meanwhile
                admin.create_topics(new, timeout_ms=kafka.request_timeout_ms)
            admin.wait_for_topics([s.name for s in missing], timeout_ms=kafka.request_timeout_ms)
        return [s.name for s in missing]
    except KafkaError as exc:
        raise KafkaUnavailableError(f"creating topics on {kafka.bootstrap_servers} failed: {exc}") from exc
    finally:
        admin.close()
