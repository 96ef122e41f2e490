"""The local Kafka script (infra/kafka/kafka.sh) against a real broker.

One broker serves the module: it starts on free ports in a temporary data dir, and the fixture's
finalizer stops it whatever the tests did. The jar cache is the script's default, so only the
first run on a machine downloads anything.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka_cluster import HOST, free_ports, kafka_sh


@dataclass(frozen=True)
class Broker:
    """A broker started through the script, and the environment that names it."""

    port: int
    controller_port: int
    data_dir: Path
    env: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def pid(self) -> int:
        return int((self.data_dir / "kafka.pid").read_text())


def script_env(data_dir: Path, port: int, controller_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_KAFKA_")}
    env |= {
        "FLYWHEEL_KAFKA_DATA_DIR": str(data_dir),
        "FLYWHEEL_KAFKA_PORT": str(port),
        "FLYWHEEL_KAFKA_CONTROLLER_PORT": str(controller_port),
        "FLYWHEEL_KAFKA_HEAP": "384m",
    }
    return env


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    data_dir = tmp_path_factory.mktemp("kafka") / "data"
    port, controller_port = free_ports(2)
    env = script_env(data_dir, port, controller_port)
    try:
        started = kafka_sh(env, "start")
        assert started.returncode == 0, started.stdout + started.stderr
        yield Broker(port, controller_port, data_dir, env)
    finally:
        stopped = kafka_sh(env, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_start_reports_the_broker(broker: Broker) -> None:
    assert (broker.data_dir / "kafka.pid").is_file()
    assert (broker.data_dir / "logs" / "meta.properties").is_file()
    assert len((broker.data_dir / "cluster.id").read_text().strip()) == 22
    config = (broker.data_dir / "server.properties").read_text()
    listeners = f"PLAINTEXT://{HOST}:{broker.port},CONTROLLER://{HOST}:{broker.controller_port}"
    assert f"listeners={listeners}\n" in config
    assert "auto.create.topics.enable=false\n" in config


def test_status_names_pid_port_and_data_dir(broker: Broker) -> None:
    status = kafka_sh(broker.env, "status")

    assert status.returncode == 0
    assert status.stdout == (f"kafka: running (pid {broker.pid()}) on {HOST}:{broker.port}, data {broker.data_dir}\n")


def test_fetch_is_a_no_op_when_cached(broker: Broker) -> None:
    fetched = kafka_sh(broker.env, "fetch")

    assert (fetched.returncode, fetched.stdout, fetched.stderr) == (0, "", "")


def test_logs_shows_the_broker_log(broker: Broker) -> None:
    logs = kafka_sh(broker.env, "logs", "5")

    assert logs.returncode == 0
    assert len(logs.stdout.splitlines()) == 5


def test_message_round_trip(broker: Broker) -> None:
    topic = f"round-trip-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        producer.send(topic, key=b"k", value=b"hello").get(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=30_000,
    )
    try:
        message = next(iter(consumer))
    finally:
        consumer.close()
    assert (message.key, message.value, message.offset) == (b"k", b"hello", 0)


def test_second_start_is_idempotent(broker: Broker) -> None:
    pid = broker.pid()

    again = kafka_sh(broker.env, "start")

    assert again.returncode == 0
    assert again.stdout == (f"kafka: already running (pid {pid}) on {HOST}:{broker.port}, data {broker.data_dir}\n")
    assert broker.pid() == pid


def test_start_on_occupied_port_fails(broker: Broker, tmp_path: Path) -> None:
    (controller_port,) = free_ports(1)
    other = script_env(tmp_path / "other", broker.port, controller_port)

    started = kafka_sh(other, "start")

    assert started.returncode == 1
    assert started.stderr == (
        f"kafka: port {broker.port} is already in use by another process; set FLYWHEEL_KAFKA_PORT\n"
    )
    assert not (tmp_path / "other" / "kafka.pid").exists()


def test_start_on_occupied_controller_port_fails(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        taken = int(listener.getsockname()[1])
        (port,) = free_ports(1)
        env = script_env(tmp_path / "data", port, taken)

        started = kafka_sh(env, "start")

    assert started.returncode == 1
    assert started.stderr == (
        f"kafka: port {taken} is already in use by another process; set FLYWHEEL_KAFKA_CONTROLLER_PORT\n"
    )


def test_status_when_process_alive_but_not_answering(broker: Broker) -> None:
    pid = broker.pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        status = kafka_sh(broker.env, "status")
    finally:
        os.kill(pid, signal.SIGCONT)

    assert status.returncode == 4
    assert status.stdout == (
        f"kafka: pid {pid} is alive but not answering on {HOST}:{broker.port}, data {broker.data_dir}\n"
    )
    assert kafka_sh(broker.env, "status").returncode == 0


def test_stop_then_status_not_running(tmp_path: Path) -> None:
    # Its own broker, so the module's broker stays up whatever order the tests run in.
    env = script_env(tmp_path / "data", *free_ports(2))
    try:
        started = kafka_sh(env, "start")
        assert started.returncode == 0, started.stdout + started.stderr
        pid = int((tmp_path / "data" / "kafka.pid").read_text())

        stopped = kafka_sh(env, "stop")

        assert (stopped.returncode, stopped.stdout) == (0, f"kafka: stopped (pid {pid})\n")
        assert not (tmp_path / "data" / "kafka.pid").exists()
        status = kafka_sh(env, "status")
        assert status.returncode == 3
        assert status.stdout == (
            f"kafka: not running (port {HOST}:{env['FLYWHEEL_KAFKA_PORT']}, data {tmp_path / 'data'})\n"
        )
        again = kafka_sh(env, "stop")
        assert (again.returncode, again.stdout) == (0, "kafka: not running\n")
    finally:
        kafka_sh(env, "stop")
