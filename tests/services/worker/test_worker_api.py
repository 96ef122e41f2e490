"""The worker's HTTP API and ``flywheel sink status`` on a running worker (real broker, real file)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import ServeApp
from kafka import KafkaProducer
from pipeline_events import feedback, interaction, wait_until

from feedback.settings import KafkaSettings, Settings
from feedback.wal import WriteAheadLog
from services.cli.ports import free_port
from services.worker.app import create_app


def flywheel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sink_status_through_the_worker(kafka_isolated: KafkaSettings, tmp_path: Path, serve_app: ServeApp) -> None:
    settings = Settings.model_validate(
        {
            "kafka": kafka_isolated.model_dump(),
            "duckdb": {"path": tmp_path / "w.duckdb"},
            "worker": {"poll_timeout_ms": 100},
        }
    )
    producer = KafkaProducer(bootstrap_servers=kafka_isolated.bootstrap_servers, acks="all")
    for n in range(12):
        producer.send(kafka_isolated.topics.interactions, key=interaction(n).kafka_key(), value=interaction(n).encode())
    producer.send(kafka_isolated.topics.feedback, key=b"k", value=feedback(1).encode())
    producer.send(kafka_isolated.topics.feedback, key=b"k", value=b"not json")
    producer.flush(30)
    producer.close()
    wal = WriteAheadLog(tmp_path / "wal", max_bytes=1 << 20, segment_bytes=1 << 16, fsync_each=True)
    wal.append("interactions", b"k", b"x" * 100)
    wal.close()

    with serve_app(create_app(settings)) as url:
        wait_until(lambda: httpx.get(f"{url}/v1/sink/status").json()["total_lag"] == 0, what="the sink to catch up")
        status = httpx.get(f"{url}/v1/sink/status").json()
        result = flywheel("sink", "status", "--worker", url, "--wal-dir", str(tmp_path / "wal"))
    assert status["rows"] == {"interactions": 12, "feedback": 1, "audit": 0}
    assert status["dead_lettered"] == 1
    assert status["dead_letter_reasons"] == {"invalid": 1}
    assert status["last_commit"] is not None
    assert {p["topic"] for p in status["partitions"]} == {
        kafka_isolated.topics.interactions,
        kafka_isolated.topics.feedback,
        kafka_isolated.topics.audit,
    }
    assert result.returncode == 0, result.stderr
    assert "total lag: 0" in result.stdout
    assert "rows: interactions 12, feedback 1, audit 0" in result.stdout
    assert "dead-lettered: 1 (since the worker started: invalid 1)" in result.stdout
    # one frame: 12-byte header, topic, key, value
    assert f"write-ahead log {tmp_path / 'wal'}: 125 bytes in 1 segments" in result.stdout


def test_sink_status_says_when_the_worker_is_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = flywheel("sink", "status", "--worker", url)
    assert result.returncode == 3
    assert f"the worker at {url} did not answer" in result.stderr
    assert "Traceback" not in result.stderr
