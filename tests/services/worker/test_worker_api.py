"""The worker's HTTP API and ``flywheel sink status`` on a running worker (real broker, real file)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
from api_keys import Keys, bearer
from fastapi import FastAPI
from kafka import KafkaProducer
from pipeline_events import feedback, interaction, produce, wait_until

from feedback.settings import KafkaSettings, Settings
from feedback.wal import WriteAheadLog
from services.cli.ports import free_port
from services.worker.app import create_app

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]


def flywheel(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=os.environ | ({"FLYWHEEL_API_KEY": key} if key else {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sink_status_through_the_worker(
    kafka_isolated: KafkaSettings, api_keys: Keys, tmp_path: Path, serve_app: ServeApp
) -> None:
    settings = Settings.model_validate(
        {
            "kafka": kafka_isolated.model_dump(),
            "duckdb": {"path": tmp_path / "w.duckdb"},
            # no lake round (whose retention run records an audit event) during the test
            "worker": {"poll_timeout_ms": 100, "lake_export_interval_s": 3600},
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

    developer = bearer(api_keys["developer"])
    with serve_app(create_app(settings)) as url:

        def caught_up() -> bool:
            return httpx.get(f"{url}/v1/sink/status", headers=developer).json()["total_lag"] == 0

        wait_until(caught_up, what="the sink to catch up")
        status = httpx.get(f"{url}/v1/sink/status", headers=developer).json()
        scraped = httpx.get(f"{url}/metrics")  # open to scrapers, like /healthz
        result = flywheel("sink", "status", "--worker", url, "--wal-dir", str(tmp_path / "wal"), key=api_keys["admin"])
        refused = flywheel("sink", "status", "--worker", url, key=api_keys["analyst"])
    assert status["rows"] == {"interactions": 12, "feedback": 1, "audit": 0}
    assert status["dead_lettered"] == 1
    assert status["dead_letter_reasons"] == {"invalid": 1}
    assert status["last_commit"] is not None
    assert {p["topic"] for p in status["partitions"]} == {
        kafka_isolated.topics.interactions,
        kafka_isolated.topics.feedback,
        kafka_isolated.topics.audit,
    }
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert 'flywheel_sink_events_total{table="interactions"} 12.0' in scraped.text
    assert 'flywheel_sink_events_total{table="feedback"} 1.0' in scraped.text
    assert 'flywheel_sink_dead_letters_total{reason="invalid"} 1.0' in scraped.text
    assert f'flywheel_sink_lag_events{{partition="0",topic="{kafka_isolated.topics.interactions}"}} 0.0' in scraped.text
    assert "flywheel_sink_kafka_reachable 1.0" in scraped.text
    assert "flywheel_refresh_running 0.0" in scraped.text
    assert result.returncode == 0, result.stderr
    assert "total lag: 0" in result.stdout
    assert "rows: interactions 12, feedback 1, audit 0" in result.stdout
    assert "dead-lettered: 1 (since the worker started: invalid 1)" in result.stdout
    # one frame: 12-byte header, topic, key, value
    assert f"write-ahead log {tmp_path / 'wal'}: 125 bytes in 1 segments" in result.stdout
    assert refused.returncode == 1
    assert "refused (403): the role 'analyst' may not operations; admin or developer may" in refused.stderr


def test_sink_status_says_when_the_worker_is_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = flywheel("sink", "status", "--worker", url)
    assert result.returncode == 3
    assert f"the worker at {url} did not answer" in result.stderr
    assert "Traceback" not in result.stderr


def test_analytics_query_over_the_exported_lake(
    kafka_isolated: KafkaSettings, api_keys: Keys, tmp_path: Path, serve_app: ServeApp
) -> None:
    settings = Settings.model_validate(
        {
            "kafka": kafka_isolated.model_dump(),
            "duckdb": {"path": tmp_path / "w.duckdb"},
            "worker": {"poll_timeout_ms": 100, "lake_dir": tmp_path / "lake", "lake_export_interval_s": 0.2},
        }
    )
    produce(kafka_isolated, [*(interaction(n) for n in range(6)), feedback(2)])
    query = {"sql": "SELECT count(*) AS n, max(seed) AS top FROM interactions"}
    analyst = bearer(api_keys["analyst"])
    with serve_app(create_app(settings)) as url:

        def exported() -> bool:
            # before the sink's first export the lake is bare: the view has only its key (a 400 here)
            answer = httpx.post(f"{url}/v1/analytics/query", json=query, headers=analyst, timeout=30)
            return answer.status_code == 200 and answer.json()["rows"] == [{"n": 6, "top": 5}]

        wait_until(exported, what="the lake export")
        joined = httpx.post(
            f"{url}/v1/analytics/query",
            json={"sql": "SELECT f.rating, i.seed FROM feedback f JOIN interactions i USING (interaction_id)"},
            headers=analyst,
            timeout=30,
        )
        refused = httpx.post(
            f"{url}/v1/analytics/query", json={"sql": "COPY interactions TO 'x.csv'"}, headers=analyst, timeout=30
        )
        raw_denied = httpx.post(
            f"{url}/v1/analytics/query", json={"sql": "FROM audit_raw"}, headers=analyst, timeout=30
        )
        wrong_key = httpx.post(
            f"{url}/v1/analytics/query", json={"sql": "FROM audit_raw"}, headers=bearer("guess"), timeout=30
        )
        raw = httpx.post(
            f"{url}/v1/analytics/query",
            json={"sql": "SELECT count(*) AS n FROM interactions_raw", "max_rows": 1},
            headers=bearer(api_keys["admin"]),
            timeout=30,
        )
        empty_sql = httpx.post(f"{url}/v1/analytics/query", json={"sql": ""}, headers=analyst, timeout=30)
    assert joined.json() == {"columns": ["rating", "seed"], "rows": [{"rating": 3, "seed": 2}], "truncated": False}
    assert refused.status_code == 403
    assert refused.json() == {
        "detail": "query refused: only SELECT queries are allowed (WITH ... SELECT included); this is a COPY statement"
    }
    assert raw_denied.status_code == 403
    assert "raw-text views (*_raw) need an admin key" in raw_denied.json()["detail"]
    assert wrong_key.status_code == 401
    assert raw.json() == {"columns": ["n"], "rows": [{"n": 6}], "truncated": False}
    assert empty_sql.status_code == 422
