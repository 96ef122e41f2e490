"""A service as a child process (``services.cli.processes``), as the demo and the load benchmark start them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from api_keys import kafka_env
from pipeline_events import wait_until

from feedback.settings import KafkaSettings
from services.cli.processes import service_process, stop_group


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


def test_a_readiness_check_of_the_callers_decides_and_its_timeout_is_named(tmp_path: Path) -> None:
    env = dict(os.environ)
    upstream = ["--upstream", "http://127.0.0.1:9"]  # never asked: the proxy starts without reaching it
    checked: list[str] = []

    def ready(url: str) -> bool:
        checked.append(url)
        return httpx.get(f"{url}/healthz", timeout=10).status_code == 502  # it answers; its upstream does not

    with service_process(
        "proxy", tmp_path, env, upstream, log_name="front", ready=ready, ready_timeout_s=60
    ) as service:
        assert set(checked) == {service.url}
        assert service.log == tmp_path / "front.log"
    with (
        pytest.raises(SystemExit, match=r"flywheel proxy was not ready after 2 s \(log .*proxy\.log\)"),
        service_process("proxy", tmp_path, env, upstream, ready=lambda url: False, ready_timeout_s=2),
    ):
        pytest.fail("a service that never passed its readiness check was held")


def test_stopping_a_group_ends_a_stubborn_service_and_what_it_started(tmp_path: Path) -> None:
    # a service that ignores SIGTERM and leaves a grandchild behind: only the group's SIGKILL ends both
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "open(sys.argv[1], 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(pid_file)], start_new_session=True)
    wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", 30, "the grandchild to start")
    grandchild = int(pid_file.read_text())
    started = time.monotonic()
    stop_group(proc, timeout_s=1)
    assert proc.returncode == -signal.SIGKILL  # SIGTERM was ignored for the whole second
    assert time.monotonic() - started >= 1
    wait_until(lambda: not alive(grandchild), 30, "the grandchild to end")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by its new parent, counts as ended)."""
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()
