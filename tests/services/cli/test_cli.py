"""The ``flywheel`` command as a user runs it: a real process, real exit codes and messages."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from feedback.settings import KafkaSettings
from services.cli.ports import free_port


def flywheel(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=os.environ | (env or {}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_bad_setting_is_named_and_exits_2() -> None:
    result = flywheel("config", "show", env={"FLYWHEEL_GATEWAY__PORT": "eighty"})
    assert result.returncode == 2
    assert "gateway.port: Input should be a valid integer" in result.stderr
    assert "'eighty'" in result.stderr


def test_unreadable_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[kafka\n")
    result = flywheel("config", "show", env={"FLYWHEEL_CONFIG": str(config)})
    assert result.returncode == 2
    assert "config file could not be read" in result.stderr


def test_config_show_masks_secrets() -> None:
    result = flywheel("config", "show", env={"FLYWHEEL_SECURITY__SIGNING_KEY": "do-not-print"})
    assert result.returncode == 0
    assert "do-not-print" not in result.stdout
    assert '"signing_key": "***"' in result.stdout


@pytest.mark.parametrize(
    ("command", "setting"), [("gateway", "FLYWHEEL_GATEWAY__PORT"), ("worker", "FLYWHEEL_WORKER__PORT")]
)
def test_port_in_use_is_a_clear_message(command: str, setting: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = flywheel(command, "--port", str(port))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use; choose another with --port or {setting}" in result.stderr


def test_missing_model_path_is_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = flywheel("model", "prepare", env={"FLYWHEEL_MODEL__SOURCE": str(missing)})
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "does not exist" in result.stderr


def local_env(kafka: KafkaSettings) -> dict[str, str]:
    return {
        "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "FLYWHEEL_KAFKA__LOCAL__PORT": str(kafka.local.port),
        "FLYWHEEL_KAFKA__LOCAL__CONTROLLER_PORT": str(kafka.local.controller_port),
        "FLYWHEEL_KAFKA__LOCAL__DATA_DIR": str(kafka.local.data_dir),
    }


def test_kafka_status_reports_the_running_broker(kafka: KafkaSettings) -> None:
    result = flywheel("kafka", "status", env=local_env(kafka))
    assert result.returncode == 0
    assert result.stdout.startswith("kafka: running (pid ")
    assert f"on 127.0.0.1:{kafka.local.port}" in result.stdout


def test_topics_create_is_idempotent(kafka: KafkaSettings) -> None:
    result = flywheel("topics", "create", env=local_env(kafka))
    assert result.returncode == 0
    assert result.stdout.strip() == "topics: all present"


def test_kafka_status_without_a_broker_exits_3(tmp_path: Path) -> None:
    env = {
        "FLYWHEEL_KAFKA__LOCAL__PORT": str(free_port()),
        "FLYWHEEL_KAFKA__LOCAL__DATA_DIR": str(tmp_path / "kafka"),
    }
    result = flywheel("kafka", "status", env=env)
    assert result.returncode == 3
    assert result.stdout.startswith("kafka: not running")


def test_kafka_up_status_down(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "FLYWHEEL_KAFKA__LOCAL__PORT": str(port),
        "FLYWHEEL_KAFKA__LOCAL__CONTROLLER_PORT": str(free_port()),
        "FLYWHEEL_KAFKA__LOCAL__DATA_DIR": str(tmp_path / "kafka"),
    }
    try:
        up = flywheel("kafka", "up", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "topics: created interactions, feedback, audit, deployments, keys, scheduler, dead-letter" in up.stdout
        status = flywheel("kafka", "status", env=env)
        assert status.returncode == 0
        assert f"on 127.0.0.1:{port}" in status.stdout
    finally:
        down = flywheel("kafka", "down", env=env)
    assert down.returncode == 0
    assert flywheel("kafka", "status", env=env).returncode == 3
