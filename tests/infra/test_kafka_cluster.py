"""A 3-node local Kafka cluster (infra/kafka/kafka.sh, FLYWHEEL_KAFKA_NODES=3) with the project's topics on it.

Three KRaft nodes (each broker and controller) start on free ports; the project's topics are created
with replication factor 3 and min.insync.replicas 2. A node killed with SIGKILL leaves the cluster
taking writes with ``acks=all`` and losing none; restarted, it catches up and is back in sync.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaConnectionError
from pipeline_events import wait_until
from test_kafka_script import HOST, free_ports, kafka_sh, script_env

from feedback.settings import KafkaSettings
from feedback.topics import ensure_topics, topic_specs


@dataclass(frozen=True)
class Cluster:
    """A cluster started through the script, and the environment that names it."""

    ports: list[int]
    data_dir: Path
    env: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{port}" for port in self.ports)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("cluster") / "data"
    ports = free_ports(6)
    env = script_env(data_dir, ports[0], ports[3]) | {
        "FLYWHEEL_KAFKA_NODES": "3",
        "FLYWHEEL_KAFKA_PORTS": ",".join(map(str, ports[:3])),
        "FLYWHEEL_KAFKA_CONTROLLER_PORTS": ",".join(map(str, ports[3:])),
        "FLYWHEEL_KAFKA_HEAP": "320m",
    }
    try:
        started = kafka_sh(env, "start")
        assert started.returncode == 0, started.stdout + started.stderr
        yield Cluster(ports[:3], data_dir, env)
    finally:
        stopped = kafka_sh(env, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def replicas(admin: KafkaAdminClient, topic: str) -> list[tuple[int, int]]:
    """(replicas, in-sync replicas) of each partition of ``topic``; empty while the node asked is unreachable.

    Right after a node is killed, the admin client may still ask it: the connection is reset and the
    next poll asks another node.
    """
    try:
        [described] = admin.describe_topics([topic])
    except KafkaConnectionError:
        return []
    partitions = sorted(described["partitions"], key=lambda p: p["partition_index"])
    return [(len(p["replica_nodes"]), len(p["isr_nodes"])) for p in partitions]


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
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaSettings.model_validate(
        {
            "bootstrap_servers": cluster.bootstrap,
            "topics": {
                "interactions": f"interactions-{suffix}",
                "feedback": f"feedback-{suffix}",
                "audit": f"audit-{suffix}",
                "deployments": f"deployments-{suffix}",
                "keys": f"keys-{suffix}",
                "scheduler": f"scheduler-{suffix}",
                "dead_letter": f"dead-letter-{suffix}",
                "replication_factor": 3,
                "min_insync_replicas": 2,
            },
        }
    )
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
