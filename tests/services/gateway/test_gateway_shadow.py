"""The shadow path with fake challengers: users only ever see the champion, whatever the challenger does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_keys import SEEDED_BOOK, USER
from fastapi.testclient import TestClient
from gateway_fakes import Behaviour, FakeBackend
from test_api import CHAT, logged_events, make_settings

from feedback import deployments
from feedback.events import InteractionEvent
from services.gateway.app import create_app

CHALLENGER = "challenger-model+v2"


def interactions(client: TestClient, expected: int, timeout_s: float = 10) -> list[InteractionEvent]:
    deadline = time.monotonic() + timeout_s
    while True:
        events = [e for e in logged_events(client) if isinstance(e, InteractionEvent)]
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.02)


def shadow_client(tmp_path: Path, behaviour: Behaviour, sample_rate: float = 1.0) -> Iterator[TestClient]:
    settings = make_settings(tmp_path)
    settings.gateway.shadow_timeout_s = 0.3
    challenger = FakeBackend(base="challenger-model", text="Lyon.", behaviour=behaviour)
    app = create_app(settings, backend=FakeBackend(), extra_backends=[challenger], keys=SEEDED_BOOK)
    with TestClient(app, headers=USER) as client:
        chat = app.state.chat
        state = deployments.set_challenger(chat.deployment, CHALLENGER, by="test", sample_rate=sample_rate)
        client.portal.call(chat.apply, state)  # type: ignore[union-attr]
        yield client


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ("ok", None),
        ("crash", "RuntimeError: device lost"),
        ("hang", "shadow timed out after 0.3 s"),
        ("garbage", "invalid shadow answer: ValidationError"),
    ],
)
def test_users_only_see_the_champion(tmp_path: Path, behaviour: Behaviour, error: str | None) -> None:
    for client in shadow_client(tmp_path, behaviour):
        answers = [client.post("/v1/chat/completions", json=CHAT | {"user": f"u{i}"}) for i in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert {a.json()["choices"][0]["message"]["content"] for a in answers} == {"Paris."}
        events = interactions(client, 6)
    served = [e for e in events if e.role == "served"]
    shadow = [e for e in events if e.role == "shadow"]
    assert {(e.arm, e.model_version, e.phase, e.error) for e in served} == {
        ("champion", "fake-model@1", "shadow", None)
    }
    assert len(shadow) == 3
    assert {(e.arm, e.model_version, e.phase) for e in shadow} == {("challenger", CHALLENGER, "shadow")}
    assert {e.interaction_id for e in shadow} == {e.interaction_id for e in served}
    if error is None:
        assert {(e.completion, e.error) for e in shadow} == {("Lyon.", None)}
    else:
        assert all(e.error is not None and e.error.startswith(error) for e in shadow)
        assert {(e.completion, e.finish_reason, e.confidence) for e in shadow} == {("", "error", None)}


def test_shadow_sampling_rate_zero_sends_no_copies(tmp_path: Path) -> None:
    for client in shadow_client(tmp_path, "ok", sample_rate=0.0):
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        events = interactions(client, 1)
    assert [(e.role, e.arm) for e in events] == [("served", "champion")]


def test_shadow_outcomes_are_counted_in_metrics(tmp_path: Path) -> None:
    for client in shadow_client(tmp_path, "crash"):
        client.post("/v1/chat/completions", json=CHAT)
        interactions(client, 2)
        text = client.get("/metrics").text
    assert 'flywheel_shadow_total{outcome="error"} 1.0' in text
    assert 'flywheel_responses_total{arm="champion",outcome="ok",role="served"} 1.0' in text
    assert 'flywheel_responses_total{arm="challenger",outcome="error",role="shadow"} 1.0' in text
