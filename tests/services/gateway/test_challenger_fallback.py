"""An A/B challenger that crashes, hangs or answers garbage: its users get the champion's answer, never an error.

The event stays in the challenger arm (intention-to-treat) with the challenger's failure in
``error`` and the champion's version in ``model_version``; fallbacks are counted in /metrics.
Fake backends: the real model's version of this runs in tests/integration/test_serving_bases.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_keys import SEEDED_BOOK, USER
from fastapi.testclient import TestClient
from gateway_fakes import Behaviour, FakeBackend
from test_api import CHAT, make_settings
from test_gateway_shadow import interactions
from test_streaming import sse_data

from feedback import deployments
from services.gateway.app import create_app
from services.gateway.errors import STREAM_FAILED
from services.gateway.fallback import ChallengerBreaker

CHALLENGER = "challenger-model+v2"
CHAMPION = "fake-model@1"


def ab_client(tmp_path: Path, behaviour: Behaviour, challenger: str = CHALLENGER) -> Iterator[TestClient]:
    """A gateway whose A/B ramp puts every user in the challenger arm."""
    settings = make_settings(tmp_path)
    settings.gateway.challenger_timeout_s = 0.3
    settings.gateway.ramp = [100]
    app = create_app(
        settings,
        backend=FakeBackend(),
        extra_backends=[FakeBackend("challenger-model", "Lyon.", behaviour)],
        keys=SEEDED_BOOK,
    )
    with TestClient(app, headers=USER) as client:
        chat = app.state.chat
        state = deployments.set_challenger(chat.deployment, challenger, by="test", mode="ab")
        client.portal.call(chat.apply, state)  # type: ignore[union-attr]
        yield client


def fallback(problem: str, challenger: str = CHALLENGER) -> str:
    return f"challenger {challenger} failed ({problem}); the champion answered"


FAILURES = [
    ("crash", "RuntimeError: device lost", "error"),
    ("hang", "no new text for 0.3 s", "timeout"),
    ("garbage", "an empty or unprintable answer", "invalid"),
    ("overloaded", "Overloaded: ", "error"),
]
AFTER_SOME_TEXT = [
    ("stall", "no new text for 0.3 s", "timeout"),
    ("break", "RuntimeError: device lost mid-stream", "error"),
]


@pytest.mark.parametrize(("behaviour", "problem", "reason"), FAILURES + AFTER_SOME_TEXT)
def test_a_failing_challenger_is_replaced_by_the_champion(
    tmp_path: Path, behaviour: Behaviour, problem: str, reason: str
) -> None:
    for client in ab_client(tmp_path, behaviour):
        answers = [client.post("/v1/chat/completions", json=CHAT | {"user": f"u{i}"}) for i in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert {a.json()["choices"][0]["message"]["content"] for a in answers} == {"Paris."}
        events = interactions(client, 3)
        text = client.get("/metrics").text
    assert len(events) == 3
    assert {(e.arm, e.role, e.phase, e.model_version) for e in events} == {("challenger", "served", "ab-100", CHAMPION)}
    assert {(e.completion, e.finish_reason, e.confidence, e.completion_tokens) for e in events} == {
        ("Paris.", "stop", 0.5, 3)
    }
    assert {e.error for e in events} == {fallback(problem)}
    assert f'flywheel_challenger_fallbacks_total{{reason="{reason}"}} 3.0' in text
    assert 'flywheel_responses_total{arm="challenger",outcome="error",role="served"} 3.0' in text


def test_a_healthy_challenger_answers_its_arm(tmp_path: Path) -> None:
    for client in ab_client(tmp_path, "ok"):
        answer = client.post("/v1/chat/completions", json=CHAT | {"user": "u1"})
        [event] = interactions(client, 1)
        text = client.get("/metrics").text
    assert answer.json()["choices"][0]["message"]["content"] == "Lyon."
    assert (event.arm, event.model_version, event.completion, event.error) == ("challenger", CHALLENGER, "Lyon.", None)
    assert "flywheel_challenger_fallbacks_total{" not in text


@pytest.mark.parametrize(("behaviour", "problem", "reason"), FAILURES)
def test_a_challenger_failing_before_its_first_piece_streams_the_champion(
    tmp_path: Path, behaviour: Behaviour, problem: str, reason: str
) -> None:
    for client in ab_client(tmp_path, behaviour):
        response = client.post("/v1/chat/completions", json=CHAT | {"stream": True, "user": "u1"})
        [event] = interactions(client, 1)
        text = client.get("/metrics").text
    assert response.status_code == 200
    chunks = [json.loads(d) for d in sse_data(response.text)[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Par"},
        {"content": "is."},
        {},
    ]
    assert (event.arm, event.model_version, event.completion, event.finish_reason) == (
        "challenger",
        CHAMPION,
        "Paris.",
        "stop",
    )
    assert event.error == fallback(problem)
    assert f'flywheel_challenger_fallbacks_total{{reason="{reason}"}} 1.0' in text


def test_a_challenger_stalling_mid_stream_ends_it_with_an_error_chunk(tmp_path: Path) -> None:
    for client in ab_client(tmp_path, "stall"):
        response = client.post("/v1/chat/completions", json=CHAT | {"stream": True, "user": "u1"})
        [event] = interactions(client, 1)
        text = client.get("/metrics").text
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [{"role": "assistant", "content": ""}, {"content": "Par"}]
    assert chunks[-1] == {"error": {"message": STREAM_FAILED, "type": "server_error", "param": None, "code": None}}
    assert (event.arm, event.model_version, event.completion, event.finish_reason, event.error) == (
        "challenger",
        CHALLENGER,
        "Par",
        "error",
        "no new text for 0.3 s",
    )
    assert 'flywheel_stream_failures_total{arm="challenger"} 1.0' in text


def test_a_challenger_that_failed_to_load_leaves_its_users_with_the_champion(tmp_path: Path) -> None:
    missing = "challenger-model+missing"
    for client in ab_client(tmp_path, "ok", challenger=missing):
        ready = client.get("/readyz").json()
        answer = client.post("/v1/chat/completions", json=CHAT | {"user": "u1"})
        [event] = interactions(client, 1)
        text = client.get("/metrics").text
    assert (ready["ready"], ready["phase"], ready["challenger"]) == (True, "ab-100", missing)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "Paris."
    assert (event.arm, event.model_version) == ("challenger", CHAMPION)
    problem = "LookupError: adapter version 'challenger-model+missing' is not in the registry"
    assert event.error == fallback(problem, missing)
    assert "flywheel_model_load_failures_total 1.0" in text


def test_a_challenger_failing_again_and_again_is_skipped_until_the_cooldown_ends(tmp_path: Path) -> None:
    for client in ab_client(tmp_path, "crash"):
        answers = [client.post("/v1/chat/completions", json=CHAT | {"user": f"u{i}"}) for i in range(7)]
        events = interactions(client, 7)
        text = client.get("/metrics").text
        challenger = client.app.state.chat.pool.backend_for(CHALLENGER)  # type: ignore[attr-defined]
    assert [a.status_code for a in answers] == [200] * 7
    assert len(challenger.calls) == 5  # BREAKER_FAILURES; the last two users did not wait for it
    skipped = fallback("skipped after 5 failures in a row, retried 30 s after the last")
    assert [e.error for e in events] == [fallback("RuntimeError: device lost")] * 5 + [skipped] * 2
    assert {(e.arm, e.model_version, e.completion) for e in events} == {("challenger", CHAMPION, "Paris.")}
    assert 'flywheel_challenger_fallbacks_total{reason="error"} 5.0' in text
    assert 'flywheel_challenger_fallbacks_total{reason="breaker"} 2.0' in text


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_failures_in_a_row_and_closes_after_the_cooldown() -> None:
    clock = FakeClock()
    breaker = ChallengerBreaker(failures=2, cooldown_s=10, clock=clock)
    breaker.record("c+1", ok=False)
    breaker.record("c+1", ok=True)  # a success resets the count
    breaker.record("c+1", ok=False)
    assert breaker.skip("c+1") is None
    breaker.record("c+1", ok=False)
    assert breaker.skip("c+1") == "skipped after 2 failures in a row, retried 10 s after the last"
    clock.now = 109.9
    assert breaker.skip("c+1") is not None
    clock.now = 110.0
    assert breaker.skip("c+1") is None  # half open: one more failure opens it again
    breaker.record("c+1", ok=False)
    assert breaker.skip("c+1") is not None
    assert breaker.skip("c+2") is None  # a new challenger starts with a clean record
    breaker.record("c+2", ok=False)
    assert breaker.skip("c+2") is None
