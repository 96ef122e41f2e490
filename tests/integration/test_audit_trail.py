"""The audit trail end to end: a live gateway on the real model, the real broker, the sink, DuckDB.

Requests of every kind (a chat, feedback, a forged feedback, an admin call without a key, a
deployment change and its rollback) become exactly one audit row each in DuckDB, with the
interaction id, the outcome, the refusal's reason and the deployment before and after.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import Keys, bearer, label
from fastapi import FastAPI
from pipeline_events import sink_audit_until
from test_serving_deployments import make_lora

from feedback.apikeys import NO_KEY
from feedback.model.runtime import ModelRuntime, model_name
from feedback.registry import AdapterRegistry
from feedback.settings import KafkaSettings, Settings
from feedback.signing import sign_id, verify_id
from feedback.store import DuckDBStore
from services.gateway.app import create_app
from services.gateway.backend import TransformersBackend

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
SIGNING_KEY = "audit-signing-key"
PROMPT = "Name a colour of the sea."
CHAT = {"model": "flywheel", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, "temperature": 0}
COLUMNS = "actor, action, resource, outcome, reason"


@pytest.fixture(scope="module")
def registry(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("audit-registry")
    adapter = make_lora(model_dir, tmp_path_factory.mktemp("audit-lora") / "adapter", seed=3)
    return root, AdapterRegistry(root).register(adapter, dataset_manifest={"rows": 0}, lineage={"parent": None})


def test_every_request_lands_as_one_audit_row_in_duckdb(
    tmp_path: Path,
    kafka_isolated: KafkaSettings,
    api_keys: Keys,
    model_dir: Path,
    registry: tuple[Path, str],
    serve_app: ServeApp,
) -> None:
    settings = Settings.model_validate(
        {
            "kafka": kafka_isolated.model_dump(),
            "gateway": {"wal": {"dir": tmp_path / "wal"}, "drain_timeout_s": 30},
            "security": {"signing_key": SIGNING_KEY},
            "model": {"registry_dir": registry[0]},
        }
    )
    base = model_name(model_dir)
    challenger = f"{base}+{registry[1]}"
    backend = TransformersBackend(ModelRuntime.load(model_dir), settings.gateway, AdapterRegistry(registry[0]))
    admin, user = bearer(api_keys["admin"]), bearer(api_keys["user"])
    with serve_app(create_app(settings, backend=backend)) as url:
        answer = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=user, timeout=300)
        signed = answer.json()["interaction_id"]
        feedback = {"interaction_id": signed, "feedback_id": "fb-1", "thumb": "up"}
        forged = feedback | {"interaction_id": sign_id("0" * 32, "forger")}
        statuses = [
            httpx.post(f"{url}/v1/feedback", json=feedback, headers=user, timeout=30).status_code,
            httpx.post(f"{url}/v1/feedback", json=forged, headers=user, timeout=30).status_code,
            httpx.get(f"{url}/v1/admin/deployments", timeout=30).status_code,
        ]
        deployed = httpx.post(
            f"{url}/v1/admin/deployments/challenger", json={"model_version": challenger}, headers=admin, timeout=300
        )
        rolled_back = httpx.post(f"{url}/v1/admin/deployments/rollback", headers=admin, timeout=60)
    assert statuses == [202, 403, 401]
    assert (deployed.status_code, rolled_back.status_code) == (200, 200)
    raw = verify_id(signed, SIGNING_KEY)

    store = DuckDBStore(tmp_path / "audit.duckdb")
    try:
        sink_audit_until(kafka_isolated, store, 6)
        rows = store.query(f"SELECT {COLUMNS} FROM audit ORDER BY ts")  # noqa: S608
        details = [r["details"] for r in store.query("SELECT details::VARCHAR AS details FROM audit ORDER BY ts")]
        leaks = store.query(
            "SELECT count(*) AS n FROM audit WHERE details::VARCHAR LIKE ? OR reason LIKE ?",
            [
                f"%{PROMPT}%",
                f"%{PROMPT}%",
            ],
        )
    finally:
        store.close()
    first, second = deployed.json()["deployment_id"], rolled_back.json()["deployment_id"]
    by_user, by_admin = label(api_keys, "user"), label(api_keys, "admin")
    assert [tuple(r.values()) for r in rows] == [
        (by_user, "chat.completion", raw, "allowed", None),
        (by_user, "feedback.submit", raw, "allowed", None),
        (
            by_user,
            "feedback.submit",
            "/v1/feedback",
            "denied",
            "interaction_id was not issued by this service (signature does not verify)",
        ),
        (
            "anonymous",
            "deployment.read",
            "/v1/admin/deployments",
            "denied",
            NO_KEY,
        ),
        (by_admin, "deployment.set_challenger", first, "allowed", None),
        (by_admin, "deployment.rollback", second, "allowed", None),
    ]
    assert leaks == [{"n": 0}]
    chat = _json(details[0])
    assert {k: chat[k] for k in ("status", "arm", "model_version", "deployment_id", "phase", "stream")} == {
        "status": 200,
        "arm": "champion",
        "model_version": base,
        "deployment_id": "initial",
        "phase": "champion-only",
        "stream": False,
    }
    assert _json(details[1])["feedback_id"] == "fb-1"
    change, rollback = _json(details[4]), _json(details[5])
    assert _brief(change["before"]) == ("initial", base, None, "champion-only", 0)
    assert _brief(change["after"]) == (first, base, challenger, "shadow", 1)
    assert change["after"]["updated_by"] == by_admin
    assert _brief(rollback["before"]) == _brief(change["after"])
    assert _brief(rollback["after"]) == (second, base, None, "champion-only", 2)


def _json(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    return value


def _brief(state: dict[str, Any]) -> tuple[Any, ...]:
    return (state["deployment_id"], state["champion"], state["challenger"], state["phase"], state["revision"])
