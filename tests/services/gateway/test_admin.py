"""Deployment changes by role, forced arms, body limits and readiness, with a fake backend."""

from __future__ import annotations

import pytest
from api_keys import ADMIN, SEEDED_KEYS, bearer
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from test_api import CHAT, logged_events


def test_admin_sees_the_deployment(client: TestClient) -> None:
    view = client.get("/v1/admin/deployments", headers=ADMIN).json()
    assert (view["phase"], view["champion"], view["challenger"], view["ramp"]) == (
        "champion-only",
        "fake-model@1",
        None,
        [5, 10, 25, 50],
    )


def test_a_change_not_allowed_is_a_409(client: TestClient) -> None:
    response = client.post("/v1/admin/deployments/rollback", headers=ADMIN)
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "there is no challenger to roll back"


def test_a_developer_may_deploy_in_shadow_but_not_enter_the_ramp(client: TestClient) -> None:
    developer = bearer(SEEDED_KEYS["developer"])
    body = {"model_version": "fake-model@1+nope", "mode": "ab"}
    response = client.post("/v1/admin/deployments/challenger", json=body, headers=developer)
    assert response.status_code == 403
    assert response.json()["error"] == {
        "message": "the role 'developer' may not deploy-ramp; admin may",
        "type": "permission_error",
        "param": None,
        "code": None,
    }
    shadow = client.post("/v1/admin/deployments/challenger", json=body | {"mode": "shadow"}, headers=developer)
    assert shadow.status_code == 503  # allowed: it got as far as publishing, and Kafka is unreachable here
    assert shadow.json()["error"]["message"].startswith("the deployments topic is unreachable: ")


def test_forcing_an_arm_needs_the_force_arm_permission(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=CHAT, headers={"X-Flywheel-Arm": "champion"})
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "the role 'user' may not force-arm; admin or developer may"
    forced = {"X-Flywheel-Arm": "champion"} | bearer(SEEDED_KEYS["developer"])
    assert client.post("/v1/chat/completions", json=CHAT, headers=forced).status_code == 200
    bad = client.post("/v1/chat/completions", json=CHAT, headers={"X-Flywheel-Arm": "sideways"})
    assert bad.status_code == 400
    assert len(logged_events(client)) == 1


def test_oversized_body_is_a_413(client: TestClient) -> None:
    body = CHAT | {"messages": [{"role": "user", "content": "x" * 5000}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "the request body exceeds 4096 bytes"

    def chunks() -> list[bytes]:
        return [b'{"model": "flywheel", "messages": [{"role": "user", "content": "', b"x" * 5000, b'"}]}']

    streamed = client.post("/v1/chat/completions", content=iter(chunks()), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert logged_events(client) == []


def test_readyz_and_metrics(client: TestClient) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "champion": "fake-model@1",
        "challenger": None,
        "phase": "champion-only",
        "deployment_id": "initial",
        "bases_loading": [],
        "bases_loaded": [],
    }
    client.post("/v1/chat/completions", json=CHAT)
    text = client.get("/metrics").text
    assert 'flywheel_completion_tokens_total{arm="champion",role="served"} 3.0' in text
    assert "flywheel_response_latency_seconds_count" in text
    # the process-wide ones too: the event log's, the audit trail's, and the process's own memory
    for name in ("flywheel_wal_pending_events", "flywheel_audit_failures_total", "process_resident_memory_bytes"):
        assert f"\n{name} " in text, name


@pytest.mark.parametrize("stream", [False, True])
def test_a_full_queue_is_a_429_with_retry_after(client: TestClient, backend: FakeBackend, stream: bool) -> None:
    backend.behaviour = "overloaded"
    response = client.post("/v1/chat/completions", json=CHAT | {"stream": stream})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["message"] == "the gateway is at capacity; retry after the Retry-After interval"
    assert logged_events(client) == []
