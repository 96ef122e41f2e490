"""The gateway's HTTP contract, with a fake backend and no reachable Kafka (pure unit tests).

The fake backend stands in for the model so these tests pin the API's behaviour exactly; the
real model and the real broker are exercised in tests/integration. Kafka is pointed at a closed
port, so every event stays in the write-ahead log, where the tests read it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from api_keys import SEEDED_BOOK, USER
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend

from feedback.events import ChatMessage, FeedbackEvent, InteractionEvent, decode_event
from feedback.model.runtime import SamplingParams
from feedback.settings import Settings
from feedback.signing import sign_id, verify_id
from services.cli.ports import free_port
from services.gateway.app import create_app

SIGNING_KEY = "test-signing-key"


def make_settings(tmp_path: Path, **wal: Any) -> Settings:
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "bootstrap_timeout_ms": 200},
            "gateway": {
                "served_model_name": "flywheel",
                "drain_timeout_s": 0,
                "wal": {"dir": tmp_path / "wal", **wal},
                "max_body_bytes": 4096,
            },
            "security": {"signing_key": SIGNING_KEY},
            "model": {"max_new_tokens": 64},
            # the fakes stream half words ("Par", "is."), which the filter holds back; its own tests turn it on
            "content_filter": {"enabled": False},
        }
    )


def logged_events(client: TestClient) -> list[InteractionEvent | FeedbackEvent]:
    """Interaction and feedback events in the write-ahead log (audit events: test_gateway_audit.py)."""
    records = client.app.state.producer.backlog()  # type: ignore[attr-defined]
    events = [decode_event(record.value) for record in records]
    return [e for e in events if isinstance(e, InteractionEvent | FeedbackEvent)]


CHAT = {"model": "flywheel", "messages": [{"role": "user", "content": "Capital of France?"}], "max_tokens": 8}


def test_chat_answers_in_the_openai_shape_with_a_signed_id(client: TestClient, backend: FakeBackend) -> None:
    response = client.post("/v1/chat/completions", json=CHAT | {"user": "alice", "temperature": 0, "seed": 7})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "flywheel"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop", "logprobs": None}
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert response.headers["X-Interaction-Id"] == body["interaction_id"]
    raw_id = verify_id(body["interaction_id"], SIGNING_KEY)
    assert body["id"] == f"chatcmpl-{raw_id}"
    assert backend.calls[0].params == SamplingParams(max_tokens=8, temperature=0.0, top_p=1.0, stop=(), seed=7)


def test_every_answer_is_logged_as_an_interaction_event(client: TestClient) -> None:
    body = client.post("/v1/chat/completions", json=CHAT | {"user": "alice"}).json()
    [event] = logged_events(client)
    assert isinstance(event, InteractionEvent)
    assert event.interaction_id == verify_id(body["interaction_id"], SIGNING_KEY)
    assert (event.arm, event.role, event.phase, event.deployment_id) == (
        "champion",
        "served",
        "champion-only",
        "initial",
    )
    assert (event.unit_id, event.model_version, event.completion) == ("alice", "fake-model@1", "Paris.")
    assert (event.prompt_tokens, event.completion_tokens, event.confidence, event.finish_reason) == (7, 3, 0.5, "stop")
    assert event.messages == (ChatMessage(role="user", content="Capital of France?"),)
    assert event.error is None


@pytest.mark.parametrize(
    ("headers", "user", "unit"),
    [
        ({"X-User-Id": "bob", "X-Session-Id": "s1"}, None, "bob"),
        ({"X-Session-Id": "s1"}, None, "s1"),
        ({"X-User-Id": "bob"}, "carol", "carol"),
        ({"X-Request-Id": "req-42"}, None, "req-42"),
    ],
)
def test_assignment_unit_precedence(client: TestClient, headers: dict[str, str], user: str | None, unit: str) -> None:
    body = CHAT | ({"user": user} if user else {})
    assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    [event] = logged_events(client)
    assert isinstance(event, InteractionEvent)
    assert event.unit_id == unit


def test_models_lists_the_served_name(client: TestClient) -> None:
    data = client.get("/v1/models").json()
    assert [m["id"] for m in data["data"]] == ["flywheel"]


@pytest.mark.parametrize(
    ("change", "status", "param", "message"),
    [
        ({"temperature": 3}, 400, "temperature", "temperature: Input should be less than or equal to 2"),
        ({"messages": []}, 400, "messages", "messages: List should have at least 1 item after validation, not 0"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", None),
        ({"n": 2}, 400, "n", "n: Input should be less than or equal to 1"),
        ({"max_tokens": 0}, 400, "max_tokens", "max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": 65}, 400, "max_tokens", "max_tokens: at most 64 tokens may be requested"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "stop: Value error, stop takes at most 4 non-empty strings"),
        ({"model": "gpt-4"}, 404, "model", "model 'gpt-4' is not served here; use 'flywheel'"),
        (
            {"max_tokens": "many"},
            400,
            "max_tokens",
            "max_tokens: Input should be a valid integer, unable to parse string as an integer",
        ),
        ({"messages": "hello"}, 400, "messages", "messages: Input should be a valid list"),
        ({"messages": [{"role": "user", "content": "w " * 95}]}, 400, "max_tokens", "prompt 95 + max_tokens 8 > 100"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    client: TestClient, change: dict[str, Any], status: int, param: str, message: str | None
) -> None:
    response = client.post("/v1/chat/completions", json=CHAT | change)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param
    if message is not None:
        assert error["message"] == message
    assert logged_events(client) == []


def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_backend_failure_is_a_503_and_is_recorded(client: TestClient, backend: FakeBackend) -> None:
    backend.fail = True
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the model backend failed to answer; retry later"
    [event] = logged_events(client)
    assert isinstance(event, InteractionEvent)
    assert (event.finish_reason, event.error, event.completion) == ("error", "RuntimeError: device lost", "")


def test_feedback_is_accepted_for_a_signed_id(client: TestClient) -> None:
    signed = client.post("/v1/chat/completions", json=CHAT).json()["interaction_id"]
    response = client.post(
        "/v1/feedback",
        json={"interaction_id": signed, "feedback_id": "fb-1", "thumb": "down", "correction": "Paris is the capital."},
        headers={"X-User-Id": "alice"},
    )
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "feedback_id": "fb-1"}
    feedback = logged_events(client)[1]
    assert isinstance(feedback, FeedbackEvent)
    assert (feedback.interaction_id, feedback.feedback_id, feedback.user_id) == (signed.split(".")[0], "fb-1", "alice")
    assert (feedback.thumb, feedback.correction) == ("down", "Paris is the capital.")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"interaction_id": sign_id("0" * 32, "another-key"), "feedback_id": "f", "thumb": "up"},
            403,
            "interaction_id was not issued by this service (signature does not verify)",
        ),
        (
            {"interaction_id": "made-up", "feedback_id": "f", "thumb": "up"},
            403,
            "interaction_id was not issued by this service (signature does not verify)",
        ),
        (
            {"interaction_id": sign_id("0" * 32, SIGNING_KEY), "feedback_id": "f"},
            400,
            "feedback needs a thumb, a rating, a comment or a correction",
        ),
        (
            {"interaction_id": sign_id("0" * 32, SIGNING_KEY), "feedback_id": "f", "rating": 6},
            400,
            "rating: Input should be less than or equal to 5",
        ),
        ({"interaction_id": sign_id("0" * 32, SIGNING_KEY), "thumb": "up"}, 400, "feedback_id: Field required"),
    ],
)
def test_bad_feedback_is_refused(client: TestClient, body: dict[str, Any], status: int, message: str) -> None:
    response = client.post("/v1/feedback", json=body)
    assert response.status_code == status
    assert response.json()["error"]["message"] == message
    assert logged_events(client) == []


def test_health_flags_unreachable_kafka_but_serving_works(client: TestClient) -> None:
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    health = client.get("/healthz").json()
    assert health["status"] == "degraded"
    assert health["kafka_connected"] is False
    assert health["pending_events"] == 2  # the interaction and the request's audit event
    assert health["model"] == "fake-model@1"


def test_full_event_log_refuses_with_503(tmp_path: Path, backend: FakeBackend) -> None:
    app = create_app(make_settings(tmp_path, max_bytes=1024, segment_bytes=1024), backend=backend, keys=SEEDED_BOOK)
    with TestClient(app, headers=USER) as client:
        statuses = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(4)]
        assert statuses[0] == 200
        assert statuses[-1] == 503
        refused = client.post("/v1/chat/completions", json=CHAT).json()
        assert refused["error"]["message"] == "the service cannot record events right now (event log full); retry later"
