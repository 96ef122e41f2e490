"""Per-key limits at the gateway (fake backends, Kafka unreachable): rate, requests in flight, messages.

The limiter itself, with a fake clock, is tested in test_limits.py; these tests run it in the app.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
from api_keys import ADMIN, SEEDED_BOOK, SEEDED_KEYS, USER
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from test_api import CHAT, make_settings
from test_gateway_audit import audit_events

from feedback.apikeys import parse_key
from feedback.settings import KeyLimitSettings, Settings
from services.gateway.app import create_app

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]


def limited_settings(tmp_path: Path, **limits: float) -> Settings:
    settings = make_settings(tmp_path)
    settings.gateway.limits = KeyLimitSettings(**limits)
    return settings


def limited_count(client: TestClient, reason: str) -> str:
    prefix = f'flywheel_key_limited_total{{reason="{reason}"}} '
    return next((line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)), "absent")


def test_a_key_over_its_rate_gets_a_429_with_retry_after_and_other_keys_do_not(tmp_path: Path) -> None:
    app = create_app(limited_settings(tmp_path, rate_per_s=0.5, burst=2), backend=FakeBackend(), keys=SEEDED_BOOK)
    with TestClient(app, headers=USER) as client:
        served = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(2)]
        refused = client.post("/v1/chat/completions", json=CHAT)
        feedback = client.post("/v1/feedback", json={"interaction_id": "x", "feedback_id": "f", "thumb": "up"})
        other_key = client.post("/v1/chat/completions", json=CHAT, headers=ADMIN)
        counted = limited_count(client, "rate")
        audited = [e for e in audit_events(app) if e.details["status"] == 429]
    assert served == [200, 200]
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "2")  # one token needs 2 s at 0.5/s
    assert refused.json() == {
        "error": {
            "message": "this API key is over its rate of 0.5 requests a second (bursts of 2); retry after 2 s",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert feedback.status_code == 429  # feedback counts against the same key's rate, before it is checked
    assert other_key.status_code == 200
    assert counted == 'flywheel_key_limited_total{reason="rate"} 2.0'
    assert [(e.action, e.outcome, e.reason) for e in audited] == [
        ("chat.completion", "denied", refused.json()["error"]["message"]),
        ("feedback.submit", "denied", feedback.json()["error"]["message"]),
    ]


def test_a_stream_holds_its_keys_slot_until_it_ends(tmp_path: Path, serve_app: ServeApp) -> None:
    settings = limited_settings(tmp_path, max_in_flight=1)
    app = create_app(settings, backend=FakeBackend(behaviour="stall"), keys=SEEDED_BOOK)
    key_id = parse_key(SEEDED_KEYS["user"])[0]
    with serve_app(app) as url:
        body = CHAT | {"stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=USER, timeout=30) as stream:
            lines = stream.iter_lines()  # kept: a dropped line iterator closes the stream
            next(lines)  # the role chunk: the stream runs, and stalls
            second = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=USER, timeout=30)
            # feedback counts against the rate only: a key's running chats do not hold it up
            unsigned = {"interaction_id": "x", "feedback_id": "f", "thumb": "up"}
            feedback = httpx.post(f"{url}/v1/feedback", json=unsigned, headers=USER, timeout=30)
            held = app.state.limits.in_flight(key_id)
        deadline = time.monotonic() + 10  # the client left: the stream's slot comes back
        while app.state.limits.in_flight(key_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        released = app.state.limits.in_flight(key_id)
    assert (second.status_code, second.headers["retry-after"]) == (429, "1")
    assert feedback.status_code == 403  # past the limits, refused for its unsigned id
    assert second.json()["error"]["message"] == ("this API key already has 1 requests in flight; retry when one ended")
    assert (held, released) == (1, 0)


def test_answered_and_failed_requests_release_their_slot(tmp_path: Path, backend: FakeBackend) -> None:
    app = create_app(limited_settings(tmp_path, max_in_flight=1), backend=backend, keys=SEEDED_BOOK)
    with TestClient(app, headers=USER) as client:
        statuses = [client.post("/v1/chat/completions", json=CHAT).status_code]
        statuses.append(client.post("/v1/chat/completions", json=CHAT | {"model": "gpt-4"}).status_code)
        backend.fail = True
        statuses.append(client.post("/v1/chat/completions", json=CHAT).status_code)
        backend.fail = False
        statuses.append(client.post("/v1/chat/completions", json=CHAT | {"stream": True}).status_code)
        statuses.append(client.post("/v1/chat/completions", json=CHAT).status_code)
    assert statuses == [200, 404, 503, 200, 200]


def test_too_many_messages_are_a_400(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings.gateway.max_messages = 3
    app = create_app(settings, backend=FakeBackend(), keys=SEEDED_BOOK)
    message = {"role": "user", "content": "hi"}
    with TestClient(app, headers=USER) as client:
        allowed = client.post("/v1/chat/completions", json=CHAT | {"messages": [message] * 3})
        refused = client.post("/v1/chat/completions", json=CHAT | {"messages": [message] * 4})
    assert allowed.status_code == 200
    assert (refused.status_code, refused.json()["error"]["message"], refused.json()["error"]["param"]) == (
        400,
        "messages: at most 3 messages per request (gateway.max_messages)",
        "messages",
    )
