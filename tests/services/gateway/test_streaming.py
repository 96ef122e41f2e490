"""Streaming (SSE) in OpenAI's chunk format, with fake backends; the event is logged after the stream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
from api_keys import SEEDED_BOOK, USER
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from test_api import CHAT, SIGNING_KEY, logged_events, make_settings

from feedback.events import InteractionEvent
from feedback.signing import verify_id
from services.gateway.app import create_app
from services.gateway.errors import STREAM_FAILED

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]


def sse_data(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line]


def test_stream_sends_role_pieces_final_chunk_and_done(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=CHAT | {"stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    signed = response.headers["X-Interaction-Id"]
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    raw_id = verify_id(signed, SIGNING_KEY)
    assert {c["id"] for c in chunks} == {f"chatcmpl-{raw_id}"}
    assert {c["interaction_id"] for c in chunks} == {signed}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Par"},
        {"content": "is."},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    [event] = logged_events(client)
    assert isinstance(event, InteractionEvent)
    assert (event.interaction_id, event.completion, event.error) == (raw_id, "Paris.", None)
    assert event.ttft_ms is not None
    assert event.ttft_ms <= event.latency_ms


def test_prompt_too_long_is_a_400_before_the_stream(client: TestClient) -> None:
    long = {"messages": [{"role": "user", "content": "word " * 99}], "stream": True}
    response = client.post("/v1/chat/completions", json=CHAT | long)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"
    assert response.json()["error"]["message"] == "prompt 99 + max_tokens 8 > 100"
    assert logged_events(client) == []


def test_client_going_away_mid_stream_is_logged(tmp_path: Path, serve_app: ServeApp) -> None:
    backend = FakeBackend(behaviour="stall")
    app = create_app(make_settings(tmp_path), backend=backend, keys=SEEDED_BOOK)
    with serve_app(app) as url:
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=CHAT | {"stream": True}, headers=USER, timeout=30
        ) as response:
            first = next(response.iter_lines())
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        deadline = time.monotonic() + 10
        while not app.state.producer.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
        events = [r.value for r in app.state.producer.backlog() if r.topic == "interactions"]
    assert len(events) == 1
    event = InteractionEvent.model_validate_json(events[0])
    assert (event.completion, event.finish_reason) == ("Par", "error")
    assert event.error == "client disconnected before the stream ended"


def test_a_backend_failure_before_the_first_token_is_a_503_and_is_recorded(
    client: TestClient, backend: FakeBackend
) -> None:
    backend.fail = True
    response = client.post("/v1/chat/completions", json=CHAT | {"stream": True})
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the model backend failed to answer; retry later"
    [event] = logged_events(client)
    assert isinstance(event, InteractionEvent)
    assert (event.finish_reason, event.error, event.completion) == ("error", "RuntimeError: device lost", "")


def test_include_usage_adds_a_usage_chunk_and_null_usage_elsewhere(client: TestClient) -> None:
    body = CHAT | {"stream": True, "stream_options": {"include_usage": True}}
    data = sse_data(client.post("/v1/chat/completions", json=body).text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["usage"] for c in chunks[:-1]] == [None, None, None, None]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "stop"]
    last = chunks[-1]
    assert (last["choices"], last["usage"]) == ([], {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    assert last["id"] == chunks[0]["id"]
    assert last["interaction_id"] == chunks[0]["interaction_id"]


def test_without_include_usage_chunks_carry_no_usage(client: TestClient) -> None:
    for options in (None, {"include_usage": False}, {}):
        body = CHAT | {"stream": True, "stream_options": options}
        chunks = [json.loads(d) for d in sse_data(client.post("/v1/chat/completions", json=body).text)[:-1]]
        assert len(chunks) == 4
        assert all("usage" not in c for c in chunks)


def test_stream_options_of_the_wrong_type_are_a_400(client: TestClient) -> None:
    cases = [
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"stream": True, "stream_options": "usage"}, "stream_options"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ]
    for extra, param in cases:
        response = client.post("/v1/chat/completions", json=CHAT | extra)
        assert response.status_code == 400, extra
        assert response.json()["error"]["param"] == param
    refused = client.post("/v1/chat/completions", json=CHAT | {"stream_options": {"include_usage": True}})
    assert refused.json()["error"]["message"] == "stream_options: only allowed when stream is true"
    assert logged_events(client) == []


def test_a_failure_after_the_first_piece_ends_the_stream_with_an_error_chunk(
    client: TestClient, backend: FakeBackend
) -> None:
    backend.behaviour = "break"
    response = client.post("/v1/chat/completions", json=CHAT | {"stream": True})
    assert response.status_code == 200
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [{"role": "assistant", "content": ""}, {"content": "Par"}]
    assert chunks[-1] == {"error": {"message": STREAM_FAILED, "type": "server_error", "param": None, "code": None}}
    [event] = logged_events(client)
    assert isinstance(event, InteractionEvent)
    assert (event.arm, event.completion, event.finish_reason, event.error) == (
        "champion",
        "Par",
        "error",
        "RuntimeError: device lost mid-stream",
    )
    assert 'flywheel_stream_failures_total{arm="champion"} 1.0' in client.get("/metrics").text
