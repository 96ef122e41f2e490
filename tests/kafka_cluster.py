"""A 3-node local Kafka cluster for tests (infra/kafka/kafka.sh, ``FLYWHEEL_KAFKA_NODES=3``).

Shared by the cluster's infra test and the cluster fault test. The nodes listen on free ports
(never the session broker's), keep their files in a directory of the caller's, and are stopped
when the block ends, whatever happened in it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaConnectionError

from feedback.settings import KafkaSettings, TopicSettings
from services.cli.broker import KAFKA_SCRIPT

HOST = "127.0.0.1"
NODES = (1, 2, 3)


@dataclass(frozen=True)
class Cluster:
    """A cluster started through the script, and the environment that names it."""

    ports: list[int]
    data_dir: Path
    env: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{port}" for port in self.ports)

    def script(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``kafka.sh *args`` on this cluster."""
        return kafka_sh(self.env, *args)

    def node(self, action: str, node: int) -> None:
        """``kill-node``, ``stop-node`` or ``start-node`` one node (start waits until it answers)."""
        done = self.script(action, str(node))
        assert done.returncode == 0, done.stdout + done.stderr


def free_ports(count: int) -> list[int]:
    """Distinct free ports: all sockets stay bound until every port is chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def kafka_sh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KAFKA_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300, check=False)


@contextmanager
def running_cluster(data_dir: Path, heap: str = "320m") -> Iterator[Cluster]:
    """Start three nodes on free ports with their files under ``data_dir``; stop them at the end."""
    ports = free_ports(6)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_KAFKA_")} | {
        "FLYWHEEL_KAFKA_DATA_DIR": str(data_dir),
        "FLYWHEEL_KAFKA_NODES": "3",
        "FLYWHEEL_KAFKA_PORTS": ",".join(map(str, ports[:3])),
        "FLYWHEEL_KAFKA_CONTROLLER_PORTS": ",".join(map(str, ports[3:])),
        "FLYWHEEL_KAFKA_HEAP": heap,
    }
    try:
        started = kafka_sh(env, "start")
        assert started.returncode == 0, started.stdout + started.stderr
        yield Cluster(ports[:3], data_dir, env)
    finally:
        stopped = kafka_sh(env, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def cluster_settings(cluster: Cluster, partitions: int = 3) -> KafkaSettings:
    """Settings naming every node, topics of the caller's own (3 copies, 2 in sync for a write), and a sink group.

    The topics are not created yet (``feedback.topics.ensure_topics``).
    """
    suffix = uuid.uuid4().hex[:8]
    names = {field: f"{name}-{suffix}" for field, name in TopicSettings().model_dump().items() if isinstance(name, str)}
    topics = TopicSettings.model_validate(
        names | {"partitions": partitions, "replication_factor": 3, "min_insync_replicas": 2}
    )
    return KafkaSettings(bootstrap_servers=cluster.bootstrap, topics=topics, consumer_group=f"sink-{suffix}")


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
