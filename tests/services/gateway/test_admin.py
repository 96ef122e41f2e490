"""Admin authentication, forced arms, body limits and readiness, with a fake backend."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from test_api import CHAT, logged_events

ADMIN_PATHS = [
    ("GET", "/v1/admin/deployments"),
    ("POST", "/v1/admin/deployments/challenger"),
    ("POST", "/v1/admin/deployments/mode"),
    ("POST", "/v1/admin/deployments/promote"),
    ("POST", "/v1/admin/deployments/rollback"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_PATHS)
def test_admin_endpoints_need_the_admin_token(client: TestClient, method: str, path: str) -> None:
    missing = client.request(method, path, json={})
    assert missing.status_code == 401
    assert missing.json()["error"]["message"] == "this endpoint needs an Authorization: Bearer <admin token> header"
    wrong = client.request(method, path, json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert wrong.json()["error"]["message"] == "the bearer token is not the admin token"


def test_admin_sees_the_deployment(client: TestClient) -> None:
    view = client.get("/v1/admin/deployments", headers={"Authorization": "Bearer dev-admin-token"}).json()
    assert (view["phase"], view["champion"], view["challenger"], view["ramp"]) == (
        "champion-only",
        "fake-model@1",
        None,
        [5, 10, 25, 50],
    )


def test_a_change_not_allowed_is_a_409(client: TestClient) -> None:
    response = client.post("/v1/admin/deployments/rollback", headers={"Authorization": "Bearer dev-admin-token"})
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "there is no challenger to roll back"


def test_forcing_an_arm_needs_the_admin_token(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=CHAT, headers={"X-Flywheel-Arm": "challenger"})
    assert response.status_code == 401
    bad = client.post("/v1/chat/completions", json=CHAT, headers={"X-Flywheel-Arm": "sideways"})
    assert bad.status_code == 400
    assert logged_events(client) == []


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


@pytest.mark.parametrize("stream", [False, True])
def test_a_full_queue_is_a_429_with_retry_after(client: TestClient, backend: FakeBackend, stream: bool) -> None:
    backend.behaviour = "overloaded"
    response = client.post("/v1/chat/completions", json=CHAT | {"stream": stream})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["message"] == "the gateway is at capacity; retry after the Retry-After interval"
    assert logged_events(client) == []
