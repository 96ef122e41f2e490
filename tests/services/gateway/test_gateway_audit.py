"""Every gateway request is an audit event (fake backend, Kafka unreachable: events stay in the log).

Pure unit tests of what the gateway records; tests/integration/test_audit_trail.py follows the
events through the real broker and sink into DuckDB.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import ADMIN, SEEDED_BOOK, SEEDED_LABELS, USER
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from test_api import CHAT, SIGNING_KEY, make_settings

from feedback.apikeys import MALFORMED_KEY, NO_KEY
from feedback.events import AuditEvent, decode_event
from feedback.signing import sign_id, verify_id
from services.gateway.app import create_app
from services.gateway.audit import ACTIONS, EXEMPT

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": CHAT,
    "/v1/feedback": {"interaction_id": sign_id("0" * 32, SIGNING_KEY), "feedback_id": "f-1", "thumb": "up"},
    "/v1/admin/deployments/challenger": {"model_version": "fake-model@1+abc"},
    "/v1/admin/deployments/mode": {"mode": "ab"},
}


def audit_events(app: Any) -> list[AuditEvent]:
    """The audit events waiting in the gateway's write-ahead log, oldest first."""
    topic = app.state.settings.kafka.topics.audit
    events = [decode_event(r.value) for r in app.state.producer.backlog() if r.topic == topic]
    return [e for e in events if isinstance(e, AuditEvent)]


def only_audit_event(client: TestClient) -> AuditEvent:
    [event] = audit_events(client.app)
    return event


def test_every_route_is_audited_or_a_named_probe(client: TestClient) -> None:
    schema = client.app.openapi()  # type: ignore[attr-defined]
    routes = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert {key for key in routes if key[1] not in EXEMPT} == set(ACTIONS)
    assert {path for _, path in routes} >= {"/healthz", "/readyz", "/metrics"}
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 200
    assert audit_events(client.app) == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("method", "path"), sorted(ACTIONS))
def test_each_route_records_its_action(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, json=BODIES.get(path), headers=ADMIN)
    event = only_audit_event(client)
    assert (event.action, event.details["method"], event.details["path"]) == (ACTIONS[method, path], method, path)
    assert event.details["status"] == response.status_code
    assert (event.actor, event.details["role"]) == (SEEDED_LABELS["admin"], "admin")


def test_probes_are_not_recorded(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
    assert audit_events(client.app) == []  # type: ignore[attr-defined]


def test_a_chat_completion_names_its_interaction_and_how_it_was_served(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "req-7"})
    event = only_audit_event(client)
    assert (event.actor, event.action, event.outcome, event.reason) == (
        SEEDED_LABELS["user"],
        "chat.completion",
        "allowed",
        None,
    )
    assert event.resource == verify_id(response.json()["interaction_id"], SIGNING_KEY)
    assert event.details == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "client": "testclient",
        "role": "user",
        "request_id": "req-7",
        "arm": "champion",
        "model_version": "fake-model@1",
        "deployment_id": "initial",
        "phase": "champion-only",
        "stream": False,
        "fallback": False,
    }
    assert b"Capital of France" not in event.encode()  # the prompt stays in the interaction row


def test_feedback_names_the_feedback_and_its_interaction(client: TestClient) -> None:
    signed = client.post("/v1/chat/completions", json=CHAT).json()["interaction_id"]
    body = {"interaction_id": signed, "feedback_id": "fb-9", "thumb": "down", "comment": "too short"}
    assert client.post("/v1/feedback", json=body).status_code == 202
    event = audit_events(client.app)[1]  # type: ignore[attr-defined]
    assert (event.action, event.resource, event.outcome) == (
        "feedback.submit",
        verify_id(signed, SIGNING_KEY),
        "allowed",
    )
    assert event.details["feedback_id"] == "fb-9"
    assert b"too short" not in event.encode()


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "reason"),
    [
        (
            "POST",
            "/v1/feedback",
            {"interaction_id": "made-up", "feedback_id": "f", "thumb": "up"},
            {},
            403,
            "interaction_id was not issued by this service (signature does not verify)",
        ),
        ("GET", "/v1/admin/deployments", None, {"Authorization": ""}, 401, NO_KEY),
        ("POST", "/v1/admin/deployments/promote", None, {"Authorization": "Bearer guess"}, 401, MALFORMED_KEY),
        (
            "POST",
            "/v1/admin/deployments/promote",
            None,
            USER,
            403,
            "the role 'user' may not deploy-ramp; admin may",
        ),
        ("POST", "/v1/admin/deployments/rollback", None, ADMIN, 409, "there is no challenger to roll back"),
        ("POST", "/v1/chat/completions", CHAT | {"model": "gpt-4"}, {}, 404, None),
        ("POST", "/v1/chat/completions", CHAT | {"temperature": 3}, {}, 400, None),
        ("GET", "/v1/nowhere", None, {}, 404, "Not Found"),
    ],
)
def test_refused_requests_are_denied_with_the_reason(
    client: TestClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    status: int,
    reason: str | None,
) -> None:
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == status
    event = only_audit_event(client)
    assert (event.outcome, event.details["status"]) == ("denied", status)
    message = response.json()["error"]["message"] if "error" in response.json() else response.json()["detail"]
    assert event.reason == (reason or message)


def test_a_refused_deployment_change_records_the_state_before(client: TestClient) -> None:
    assert client.post("/v1/admin/deployments/promote", headers=ADMIN).status_code == 409
    event = only_audit_event(client)
    assert (event.actor, event.action, event.resource) == (SEEDED_LABELS["admin"], "deployment.promote", "initial")
    assert event.details["before"] == {
        "deployment_id": "initial",
        "revision": 0,
        "champion": "fake-model@1",
        "challenger": None,
        "mode": "shadow",
        "ramp_step": 0,
        "shadow_sample_rate": 1.0,
        "updated_by": "system",
        "phase": "champion-only",
    }
    assert "after" not in event.details


def test_an_oversized_body_and_an_overload_are_denied(client: TestClient, backend: FakeBackend) -> None:
    client.post("/v1/chat/completions", json=CHAT | {"messages": [{"role": "user", "content": "x" * 5000}]})
    backend.behaviour = "overloaded"
    client.post("/v1/chat/completions", json=CHAT)
    large, busy = audit_events(client.app)  # type: ignore[attr-defined]
    assert (large.action, large.outcome, large.reason) == (
        "chat.completion",
        "denied",
        "the request body exceeds 4096 bytes",
    )
    assert (busy.outcome, busy.details["status"]) == ("denied", 429)
    assert busy.reason == "the gateway is at capacity; retry after the Retry-After interval"


def test_backend_failures_are_errors(client: TestClient, backend: FakeBackend) -> None:
    backend.fail = True
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 503
    backend.fail, backend.behaviour = False, "break"
    streamed = client.post("/v1/chat/completions", json=CHAT | {"stream": True})
    assert streamed.status_code == 200
    failed, broken = audit_events(client.app)  # type: ignore[attr-defined]
    assert (failed.outcome, failed.details["status"], failed.reason) == (
        "error",
        503,
        "the model backend failed to answer; retry later",
    )
    assert (broken.outcome, broken.details["status"], broken.details["stream"]) == ("error", 200, True)
    assert broken.reason == "RuntimeError: device lost mid-stream"


def test_a_client_leaving_mid_stream_is_recorded(tmp_path: Path, serve_app: ServeApp) -> None:
    app = create_app(make_settings(tmp_path), backend=FakeBackend(behaviour="stall"), keys=SEEDED_BOOK)
    with serve_app(app) as url:
        body = CHAT | {"stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=USER, timeout=30) as response:
            first = next(response.iter_lines())
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        deadline = time.monotonic() + 10
        while not audit_events(app) and time.monotonic() < deadline:
            time.sleep(0.05)
        [event] = audit_events(app)
    assert (event.action, event.outcome, event.details["status"]) == ("chat.completion", "error", 200)
    assert event.reason == "client disconnected before the stream ended"
