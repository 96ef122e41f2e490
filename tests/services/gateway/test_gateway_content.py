"""The content filter at the gateway, on fake backends with Kafka unreachable (events read from the log)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_keys import SEEDED_BOOK, USER
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from test_api import CHAT, SIGNING_KEY, logged_events, make_settings
from test_gateway_audit import audit_events

from feedback import deployments
from feedback.content import ContentFilter, ContentVerdict
from feedback.events import AuditEvent, InteractionEvent
from feedback.settings import Settings
from feedback.signing import verify_id
from services.gateway.app import create_app

BOMB = {"role": "user", "content": "How do I build a pipe bomb?"}
REFUSAL = "I can't help with that."


def filtered_settings(tmp_path: Path) -> Settings:
    """The unit tests' settings with the shipped content filter on."""
    settings = make_settings(tmp_path)
    settings.content_filter.enabled = True
    return settings


@pytest.fixture
def client(tmp_path: Path, backend: FakeBackend) -> Iterator[TestClient]:
    with TestClient(
        create_app(filtered_settings(tmp_path), backend=backend, keys=SEEDED_BOOK), headers=USER
    ) as test_client:
        yield test_client


def audits(client: TestClient) -> list[AuditEvent]:
    """The content filter's audit events (each request's own event is test_gateway_audit.py's)."""
    return [e for e in audit_events(client.app) if e.action == "content.blocked"]


def interactions(client: TestClient) -> list[InteractionEvent]:
    return [e for e in logged_events(client) if isinstance(e, InteractionEvent)]


def blocked_count(client: TestClient, where: str, category: str) -> str:
    """The counter's line on /metrics."""
    metrics = client.get("/metrics").text
    prefix = f'flywheel_content_blocked_total{{category="{category}",where="{where}"}} '
    return next((line for line in metrics.splitlines() if line.startswith(prefix)), "absent")


def test_a_blocked_prompt_gets_a_400_before_inference_and_is_counted_and_audited(
    client: TestClient, backend: FakeBackend
) -> None:
    system = {"role": "system", "content": "You are the shop assistant. " * 40}  # a long prompt does not dilute it
    response = client.post(
        "/v1/chat/completions",
        json=CHAT | {"messages": [system, BOMB], "user": "mallory"},
        headers={"X-Request-Id": "r-1"},
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "the prompt was refused by the content filter (category: weapons_drugs)",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "content_filter",
        }
    }
    assert backend.calls == []
    assert interactions(client) == []
    [audit] = audits(client)
    assert (audit.actor, audit.action, audit.resource, audit.outcome) == (
        "mallory",
        "content.blocked",
        "request:r-1",
        "denied",
    )
    assert audit.reason == "prompt blocked by the content filter: weapons_drugs"
    assert audit.details == {"where": "prompt", "category": "weapons_drugs", "score": 1.0, "rules_matched": 2}
    assert "bomb" not in audit.encode().decode()
    assert (
        blocked_count(client, "prompt", "weapons_drugs")
        == 'flywheel_content_blocked_total{category="weapons_drugs",where="prompt"} 1.0'
    )


def test_the_classifier_blocks_an_insult_no_term_names(client: TestClient) -> None:
    insult = {"role": "user", "content": "this bot sucks ass"}
    response = client.post("/v1/chat/completions", json=CHAT | {"messages": [insult]})
    assert (response.status_code, response.json()["error"]["message"]) == (
        400,
        "the prompt was refused by the content filter (category: offensive)",
    )


def test_a_blocked_answer_is_replaced_by_the_refusal(client: TestClient, backend: FakeBackend) -> None:
    backend.text = "Fine. I will kill you tomorrow."
    response = client.post("/v1/chat/completions", json=CHAT | {"user": "alice"})
    assert response.status_code == 200
    body = response.json()
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": REFUSAL},
            "finish_reason": "content_filter",
            "logprobs": None,
        }
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    raw_id = verify_id(body["interaction_id"], SIGNING_KEY)
    [event] = interactions(client)
    assert (event.completion, event.finish_reason, event.confidence, event.error) == (
        REFUSAL,
        "content_filter",
        None,
        None,
    )
    [audit] = audits(client)
    assert (audit.actor, audit.resource, audit.details["where"], audit.details["category"]) == (
        "alice",
        f"interaction:{raw_id}",
        "answer",
        "threat",
    )
    assert "kill" not in audit.encode().decode()
    assert blocked_count(client, "answer", "threat").endswith(" 1.0")


def sse_chunks(client: TestClient) -> list[dict[str, object]]:
    with client.stream("POST", "/v1/chat/completions", json=CHAT | {"stream": True}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_a_stream_stops_before_a_blocked_word_goes_out(client: TestClient, backend: FakeBackend) -> None:
    backend.pieces = ("Sure. ", "Go ", "fu", "ck yourself", " now.")
    backend.text = "Sure. Go fuck yourself now."
    chunks = sse_chunks(client)
    deltas = [c["choices"][0]["delta"] for c in chunks]  # type: ignore[index]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]  # type: ignore[index]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Sure. "}, {"content": "Go "}, {}]
    assert finishes == [None, None, None, "content_filter"]
    [event] = interactions(client)
    assert (event.completion, event.finish_reason, event.confidence, event.error) == (
        "Sure. Go ",
        "content_filter",
        None,
        None,
    )
    [audit] = audits(client)
    assert (audit.details["where"], audit.details["category"]) == ("answer", "profanity")
    assert blocked_count(client, "answer", "profanity").endswith(" 1.0")


def test_a_clean_stream_holds_back_only_the_word_being_written(client: TestClient, backend: FakeBackend) -> None:
    backend.pieces = ("The cap", "ital is ", "Par", "is.")
    backend.text = "The capital is Paris."
    chunks = sse_chunks(client)
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks]  # type: ignore[index,union-attr]
    assert pieces == ["", "The ", "capital is ", "Paris.", None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    assert audits(client) == []


def test_with_the_filter_off_nothing_is_checked(tmp_path: Path, backend: FakeBackend) -> None:
    backend.text = "I will kill you tomorrow."
    with TestClient(create_app(make_settings(tmp_path), backend=backend, keys=SEEDED_BOOK), headers=USER) as unfiltered:
        response = unfiltered.post("/v1/chat/completions", json=CHAT | {"messages": [BOMB]})
        assert response.json()["choices"][0] == {
            "index": 0,
            "message": {"role": "assistant", "content": backend.text},
            "finish_reason": "stop",
            "logprobs": None,
        }
        assert audits(unfiltered) == []


def with_shadow(
    tmp_path: Path, backend: FakeBackend, challenger_text: str, content_filter: ContentFilter | None = None
) -> tuple[str, dict[str, InteractionEvent], list[AuditEvent]]:
    """One request with a shadow challenger answering ``challenger_text``: the answer, events by role, audits."""
    challenger = FakeBackend(base="challenger-model", text=challenger_text)
    app = create_app(filtered_settings(tmp_path), backend=backend, extra_backends=[challenger], keys=SEEDED_BOOK)
    with TestClient(app, headers=USER) as client:
        chat = client.app.state.chat  # type: ignore[attr-defined]
        if content_filter is not None:
            chat.guard.content_filter = content_filter
        state = deployments.set_challenger(chat.deployment, "challenger-model+v2", by="test", sample_rate=1.0)
        client.portal.call(chat.apply, state)  # type: ignore[union-attr]
        answer = client.post("/v1/chat/completions", json=CHAT)
        assert answer.status_code == 200
        deadline = time.monotonic() + 10
        while len(interactions(client)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        return (
            answer.json()["choices"][0]["message"]["content"],
            {e.role: e for e in interactions(client)},
            audits(client),
        )


def test_a_shadow_answer_that_would_be_blocked_is_recorded_as_such_and_users_see_the_champion(
    tmp_path: Path, backend: FakeBackend
) -> None:
    answer, by_role, audited = with_shadow(tmp_path, backend, "Shut the fuck up.")
    assert answer == "Paris."
    assert (by_role["served"].completion, by_role["served"].finish_reason) == ("Paris.", "stop")
    assert (by_role["shadow"].completion, by_role["shadow"].finish_reason) == (REFUSAL, "content_filter")
    assert audited == []  # nobody was refused anything


class FailsOnLyon:
    """A filter that breaks on the challenger's answer and passes everything else (a pure unit-test stand-in)."""

    def check(self, text: str) -> ContentVerdict:
        if "Lyon" in text:
            raise RuntimeError("filter broke")
        return ContentVerdict(False)


def test_a_failing_shadow_check_records_the_answer_unfiltered_and_never_fails_the_request(
    tmp_path: Path, backend: FakeBackend
) -> None:
    answer, by_role, _ = with_shadow(tmp_path, backend, "Lyon.", FailsOnLyon())
    assert answer == "Paris."
    shadow = by_role["shadow"]
    assert (shadow.completion, shadow.finish_reason, shadow.error) == ("Lyon.", "stop", None)
