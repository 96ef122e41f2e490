"""A key revoked with ``flywheel keys revoke`` is refused by a running gateway within seconds (real broker, model)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
from api_keys import bearer, kafka_env
from fastapi import FastAPI
from pipeline_events import wait_until
from test_cli import flywheel

from feedback.apikeys import parse_key
from feedback.model.runtime import ModelRuntime
from feedback.settings import KafkaSettings, Settings
from services.gateway.app import create_app
from services.gateway.backend import TransformersBackend

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]


def test_a_key_made_and_revoked_with_the_cli_reaches_a_running_gateway(
    tmp_path: Path, kafka_isolated: KafkaSettings, runtime: ModelRuntime, serve_app: ServeApp
) -> None:
    env = kafka_env(kafka_isolated)
    settings = Settings.model_validate(
        {"kafka": kafka_isolated.model_dump(), "gateway": {"wal": {"dir": tmp_path / "wal"}, "drain_timeout_s": 0}}
    )
    with serve_app(create_app(settings, backend=TransformersBackend(runtime, settings.gateway))) as url:
        created = flywheel("keys", "create", "--name", "late", "--role", "user", env=env)  # made while it runs
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()

        def models_status() -> int:
            return httpx.get(f"{url}/v1/models", headers=bearer(key), timeout=30).status_code

        wait_until(lambda: models_status() == 200, timeout=10, what="the gateway to accept the new key")
        revoked = flywheel("keys", "revoke", parse_key(key)[0], env=env)
        assert revoked.returncode == 0, revoked.stderr
        wait_until(lambda: models_status() == 401, timeout=10, what="the gateway to refuse the revoked key")
        refused = httpx.get(f"{url}/v1/models", headers=bearer(key), timeout=30)
    assert refused.json()["error"]["message"] == "the API key was revoked"
