"""Topic creation against the real broker: names, partitions, compaction and retention from settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from feedback.settings import KafkaSettings, TopicSettings
from feedback.topics import ensure_topics, topic_specs


@pytest.fixture
def admin(kafka: KafkaSettings) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    yield client
    client.close()


def test_topics_are_created_once_as_configured(
    kafka: KafkaSettings, unique_topics: TopicSettings, admin: KafkaAdminClient
) -> None:
    topics = unique_topics.model_copy(update={"partitions": 4, "retention_hours": 2})
    settings = kafka.model_copy(update={"topics": topics})
    names = {s.name.rsplit("-", 1)[0]: s.name for s in topic_specs(settings)}

    assert ensure_topics(settings) == [s.name for s in topic_specs(settings)]
    assert ensure_topics(settings) == []  # idempotent

    described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(names.values()))}
    assert described == {
        names["interactions"]: 4,
        names["feedback"]: 4,
        names["audit"]: 4,
        names["deployments"]: 1,
        names["keys"]: 1,
        names["scheduler"]: 1,
        names["dead-letter"]: 4,
    }
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, names[t])
        for t in ("deployments", "keys", "interactions", "dead-letter")
    ]
    configs = admin.describe_configs(resources)["topic"]
    assert configs[names["deployments"]]["cleanup.policy"]["value"] == "compact"
    assert configs[names["keys"]]["cleanup.policy"]["value"] == "compact"
    assert configs[names["interactions"]]["retention.ms"]["value"] == str(2 * 3_600_000)
    assert configs[names["dead-letter"]]["retention.ms"]["value"] == str(720 * 3_600_000)
