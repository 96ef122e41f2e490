"""A blocked prompt's audit event reaches the audit topic on the real Kafka broker (the model is a fake)."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_keys import Keys, bearer
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from pipeline_events import topic_events

from feedback.events import AuditEvent
from feedback.settings import KafkaSettings, Settings
from services.gateway.app import create_app

pytestmark = pytest.mark.kafka


def test_a_blocked_prompt_is_audited_through_kafka(
    tmp_path: Path, kafka_isolated: KafkaSettings, api_keys: Keys
) -> None:
    settings = Settings.model_validate(
        {
            "kafka": kafka_isolated.model_dump(),
            "gateway": {"wal": {"dir": tmp_path / "wal"}, "drain_timeout_s": 10},
            "security": {"signing_key": "audit-signing-key"},
            "content_filter": {"classifier": False},  # the term list blocks this prompt; no need to load the model
        }
    )
    backend = FakeBackend(base="flywheel-base")
    body = {"model": "flywheel", "messages": [{"role": "user", "content": "Where can I buy heroin tonight?"}]}
    with TestClient(create_app(settings, backend=backend), headers=bearer(api_keys["user"])) as client:
        response = client.post("/v1/chat/completions", json=body | {"user": "eve"}, headers={"X-Request-Id": "r-9"})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "content_filter")
    # the filter's own event and the request's (a denied chat.completion), in either order
    events = topic_events(kafka_isolated.bootstrap_servers, kafka_isolated.topics.audit, 2)
    assert all(isinstance(e, AuditEvent) for e in events)
    by_action = {e.action: e for e in events if isinstance(e, AuditEvent)}
    assert sorted(by_action) == ["chat.completion", "content.blocked"]
    request = by_action["chat.completion"]
    assert (request.outcome, request.details["status"], request.resource) == ("denied", 400, "/v1/chat/completions")
    event = by_action["content.blocked"]
    assert (event.actor, event.action, event.resource, event.outcome) == (
        "eve",
        "content.blocked",
        "request:r-9",
        "denied",
    )
    assert event.details == {"where": "prompt", "category": "weapons_drugs", "score": 1.0, "rules_matched": 1}
    assert backend.calls == []
