"""A service as a child process (``services.cli.processes``), as the demo and the load benchmark start them."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from api_keys import kafka_env

from feedback.settings import KafkaSettings
from services.cli.processes import service_process


def test_a_service_is_ready_while_held_and_stopped_after(kafka_isolated: KafkaSettings, tmp_path: Path) -> None:
    env = os.environ | kafka_env(kafka_isolated)
    env |= {
        "FLYWHEEL_KAFKA__CONSUMER_GROUP": kafka_isolated.consumer_group,
        "FLYWHEEL_DUCKDB__PATH": str(tmp_path / "w.duckdb"),
        "FLYWHEEL_WORKER__LAKE_DIR": str(tmp_path / "lake"),
        "FLYWHEEL_SCHEDULER__ENABLED": "false",
    }
    with service_process("worker", tmp_path, env) as service:
        assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
        assert Path(f"/proc/{service.pid}").exists()
    assert not Path(f"/proc/{service.pid}").exists()
    assert service.log == tmp_path / "worker.log"


def test_a_service_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    env = os.environ | {"FLYWHEEL_WORKER__BATCH_MAX_EVENTS": "0"}
    with (
        pytest.raises(SystemExit, match="flywheel worker exited with code 2") as exited,
        service_process("worker", tmp_path, env),
    ):
        pytest.fail("the worker started with a setting out of range")
    assert "worker.batch_max_events" in str(exited.value)
