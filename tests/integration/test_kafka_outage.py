"""Kafka unreachable when the gateway starts: it serves anyway, flags it, and keeps every event.

A first gateway serves while no broker listens on its configured port, reports the outage in
/healthz, and stops with its event still in the write-ahead log. Then a broker starts on that
port; a second gateway on the same log replays the event, serves one more, and the sink stores
both exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest
from api_keys import SEEDED_BOOK, USER
from fastapi import FastAPI

from feedback.model.runtime import ModelRuntime
from feedback.settings import KafkaSettings, LocalKafkaSettings, Settings
from feedback.signing import verify_id
from feedback.store import DuckDBStore
from feedback.topics import ensure_topics
from services.cli import broker
from services.cli.ports import free_port
from services.gateway.app import create_app
from services.gateway.backend import TransformersBackend
from services.worker.sink import Sink

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
CHAT = {"model": "flywheel", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6, "temperature": 0}


@contextmanager
def broker_on(local: LocalKafkaSettings) -> Iterator[None]:
    started = broker.run_script("start", local, capture=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield
    finally:
        broker.run_script("stop", local, capture=True)


def ask(url: str) -> str:
    response = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=USER, timeout=120)
    assert response.status_code == 200
    return verify_id(response.json()["interaction_id"], "outage-key")


def test_gateway_serves_without_kafka_and_delivers_later(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, runtime: ModelRuntime, serve_app: ServeApp
) -> None:
    local = LocalKafkaSettings(
        port=free_port(), controller_port=free_port(), data_dir=tmp_path_factory.mktemp("outage")
    )
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{local.port}", bootstrap_timeout_ms=500, local=local)
    settings = Settings.model_validate(
        {
            "kafka": kafka.model_dump(),
            "gateway": {"wal": {"dir": tmp_path / "wal"}, "drain_timeout_s": 0},
            "security": {"signing_key": "outage-key"},
        }
    )
    backend = TransformersBackend(runtime)

    # the key book starts with keys of its own: the keys topic is as unreachable as the rest of Kafka
    with serve_app(create_app(settings, backend=backend, keys=SEEDED_BOOK)) as url:
        first = ask(url)
        health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "degraded"
    assert health["kafka_connected"] is False
    assert health["pending_events"] == 2  # the interaction and the request's audit event
    assert health["kafka_error"].startswith("KafkaTimeoutError")

    with broker_on(local):
        ensure_topics(kafka)
        with serve_app(create_app(settings, backend=backend, keys=SEEDED_BOOK)) as url:
            second = ask(url)
            deadline = time.monotonic() + 60
            while httpx.get(f"{url}/healthz").json()["pending_events"]:
                assert time.monotonic() < deadline, "the write-ahead log was not replayed"
                time.sleep(0.1)
            assert httpx.get(f"{url}/healthz").json()["status"] == "ok"

        store = DuckDBStore(tmp_path / "flywheel.duckdb")
        sink = Sink(kafka, store, batch_max=100, poll_timeout_ms=200)
        thread = threading.Thread(target=sink.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while sink.stats.interactions < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        sink.stop()
        thread.join(timeout=60)
        rows = store.query("SELECT interaction_id FROM interactions ORDER BY ts")
        store.close()
    assert [r["interaction_id"] for r in rows] == [first, second]
