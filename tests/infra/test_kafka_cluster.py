"""A 3-node local Kafka cluster (infra/kafka/kafka.sh, FLYWHEEL_KAFKA_NODES=3) with the project's topics on it.

Three KRaft nodes (each broker and controller) start on free ports; the project's topics are created
with replication factor 3 and min.insync.replicas 2. A node killed with SIGKILL leaves the cluster
taking writes with ``acks=all`` and losing none; restarted, it catches up and is back in sync.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka_cluster import HOST, Cluster, cluster_settings, kafka_sh, replicas, running_cluster
from pipeline_events import wait_until

from feedback.topics import ensure_topics, topic_specs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster") / "data") as started:
        yield started


def test_start_status_and_bootstrap_name_every_node(cluster: Cluster) -> None:
    status = kafka_sh(cluster.env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert [line.split(" on ")[1].split(",")[0] for line in lines] == [f"{HOST}:{p}" for p in cluster.ports]
    assert [line.split("data ")[1] for line in lines] == [str(cluster.data_dir / f"node-{n}") for n in (1, 2, 3)]
    assert kafka_sh(cluster.env, "bootstrap").stdout == cluster.bootstrap + "\n"
    ids = {(cluster.data_dir / f"node-{n}" / "logs" / "meta.properties").read_text().split("cluster.id=")[1][:22]
           for n in (1, 2, 3)}  # fmt: skip
    assert ids == {(cluster.data_dir / "cluster.id").read_text().strip()}  # one cluster, formatted once per node


def test_topics_are_replicated_and_survive_a_killed_node(cluster: Cluster) -> None:
    kafka = cluster_settings(cluster)
    ensure_topics(kafka)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    topic = kafka.topics.interactions
    try:
        for spec in topic_specs(kafka):
            assert replicas(admin, spec.name) == [(3, 3)] * spec.partitions
        [configs] = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]).values()
        assert configs[topic]["min.insync.replicas"]["value"] == "2"

        producer = KafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", retries=10)
        for n in range(50):
            producer.send(topic, key=f"k{n}".encode(), value=f"before {n}".encode()).get(timeout=30)
        killed = kafka_sh(cluster.env, "kill-node", "2")
        assert killed.returncode == 0, killed.stdout + killed.stderr
        wait_until(
            lambda: [isr for _, isr in replicas(admin, topic)] == [2] * kafka.topics.partitions,
            90,
            "the killed node to leave the ISR",
        )
        for n in range(50):  # 2 in-sync replicas of 3 still meet min.insync.replicas
            producer.send(topic, key=f"k{n}".encode(), value=f"during {n}".encode()).get(timeout=30)
        assert kafka_sh(cluster.env, "status").returncode == 4  # a node is down
        restarted = kafka_sh(cluster.env, "start-node", "2")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        wait_until(lambda: replicas(admin, topic) == [(3, 3)] * kafka.topics.partitions, 90, "the node to catch up")
        for n in range(50):
            producer.send(topic, key=f"k{n}".encode(), value=f"after {n}".encode()).get(timeout=30)
        producer.close()
        consumer = KafkaConsumer(topic, bootstrap_servers=cluster.bootstrap, auto_offset_reset="earliest")
        values: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(values) < 150 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values += [r.value for r in records]
        consumer.close()
        expected = [f"{phase} {n}".encode() for phase in ("before", "during", "after") for n in range(50)]
        assert sorted(values) == sorted(expected)  # every write acknowledged is there, once
    finally:
        admin.close()
