"""The round-robin proxy over real HTTP, in front of small upstream apps served on free ports.

Requests go to the upstreams in turn with their method, path, query, body and end-to-end headers;
answers come back with their status and headers, streams chunk by chunk as they are produced; an
upstream that refuses connections is skipped; when none accepts, or the one that took the request
fails before answering, the proxy answers a 502 with a fixed message.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from services.cli.ports import free_port
from services.proxy.app import create_app
from services.proxy.config import ProxyConfig
from services.proxy.errors import NO_UPSTREAM, TOO_LARGE, UPSTREAM_FAILED
from services.proxy.headers import request_headers

ServeApp = Callable[[Any], AbstractContextManager[str]]
RELEASE_TIMEOUT_S = 60.0  # the streaming upstream's longest wait for the client's go-ahead


def named_upstream(name: str, seen: list[dict[str, Any]]) -> FastAPI:
    """An upstream that answers every request with its name, and notes what it received."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def echo(path: str, request: Request) -> Response:
        seen.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "body": (await request.body()).decode(),
                "headers": request.headers.raw,
            }
        )
        response = Response(f'{{"name": "{name}"}}', media_type="application/json")
        response.headers["X-Interaction-Id"] = f"{name}.signature"
        response.raw_headers += [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
        return response

    return app


def streaming_upstream(release: threading.Event) -> FastAPI:
    """Server-sent events: the first at once, the rest only once ``release`` is set (or its wait timed out)."""
    app = FastAPI()

    async def events() -> AsyncIterator[str]:
        yield "data: first\n\n"
        released = await asyncio.to_thread(release.wait, RELEASE_TIMEOUT_S)
        yield f"data: {'second' if released else 'released by the timeout'}\n\n"
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def breaking_upstream() -> FastAPI:
    """Server-sent events that break off after the first one."""
    app = FastAPI()

    async def events() -> AsyncIterator[str]:
        yield "data: first\n\n"
        raise RuntimeError("the upstream broke off its stream")

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@contextmanager
def hanging_up_server() -> Iterator[tuple[str, list[bytes]]]:
    """A server that accepts connections, reads the request and closes without answering; what it read."""
    received: list[bytes] = []
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)

        def serve() -> None:
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                with connection:
                    received.append(connection.recv(65536))

        thread = threading.Thread(target=serve, name="hanging-up", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}", received
        finally:
            stop.set()
            thread.join(timeout=10)


def refusing_url() -> str:
    """A loopback address where nothing listens: connections to it are refused."""
    return f"http://127.0.0.1:{free_port()}"


@contextmanager
def proxy_in_front(serve_app: ServeApp, *upstreams: str, **config: Any) -> Iterator[str]:
    """The proxy on a free port in front of ``upstreams``; its URL."""
    with serve_app(create_app(ProxyConfig(upstreams=upstreams, **config))) as url:
        yield url


def test_requests_go_to_the_upstreams_in_turn(serve_app: ServeApp) -> None:
    seen: list[dict[str, Any]] = []
    with ExitStack() as stack:
        upstreams = [stack.enter_context(serve_app(named_upstream(name, seen))) for name in ("a", "b", "c")]
        proxy = stack.enter_context(proxy_in_front(serve_app, *upstreams))
        names = [httpx.get(f"{proxy}/v1/models", timeout=30).json()["name"] for _ in range(7)]
    assert names == ["a", "b", "c", "a", "b", "c", "a"]


def test_method_path_query_body_and_end_to_end_headers_cross_the_proxy(serve_app: ServeApp) -> None:
    seen: list[dict[str, Any]] = []
    with serve_app(named_upstream("a", seen)) as upstream, proxy_in_front(serve_app, upstream + "/") as proxy:
        response = httpx.post(
            f"{proxy}/v1/chat/completions?x=1&y=%20two",
            content=b'{"user": "u1"}',
            headers={
                "Authorization": "Bearer secret-key",
                "X-User-Id": "u1",
                "User-Agent": "the-client/1.0",
                "Accept-Encoding": "identity",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "dropped",
            },
            timeout=30,
        )
    assert response.status_code == 200
    assert response.json() == {"name": "a"}
    assert response.headers["x-interaction-id"] == "a.signature"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert len(response.headers.get_list("server")) == len(response.headers.get_list("date")) == 1
    [request] = seen
    assert (request["method"], request["path"], request["query"], request["body"]) == (
        "POST",
        "/v1/chat/completions",
        "x=1&y=%20two",
        '{"user": "u1"}',
    )
    headers = dict(request["headers"])
    assert headers[b"authorization"] == b"Bearer secret-key"
    assert headers[b"x-user-id"] == b"u1"
    assert headers[b"user-agent"] == b"the-client/1.0"
    assert headers[b"x-forwarded-for"] == b"127.0.0.1"
    assert headers[b"content-length"] == b"14"
    assert headers[b"host"] == upstream.removeprefix("http://").encode()
    assert headers[b"accept-encoding"] == b"identity"
    assert set(headers) == {  # hop-by-hop headers stay behind, and the proxy adds none of its client's own
        *(b"host", b"content-length", b"accept", b"accept-encoding", b"user-agent"),
        *(b"authorization", b"x-user-id", b"x-forwarded-for"),
    }


def test_a_stream_is_relayed_as_the_upstream_produces_it(serve_app: ServeApp) -> None:
    release = threading.Event()
    with serve_app(streaming_upstream(release)) as upstream, proxy_in_front(serve_app, upstream) as proxy:
        events = []
        with httpx.stream("POST", f"{proxy}/v1/chat/completions", json={"stream": True}, timeout=120) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    release.set()  # only reached when the first event came through before the rest existed
    assert events == ["first", "second", "[DONE]"]


def test_a_stream_the_upstream_breaks_off_is_not_passed_off_as_whole(serve_app: ServeApp) -> None:
    with serve_app(breaking_upstream()) as upstream, proxy_in_front(serve_app, upstream) as proxy:
        events = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("POST", f"{proxy}/v1/chat/completions", json={}, timeout=60) as response,
        ):
            events.extend(line for line in response.iter_lines() if line)
    assert events == ["data: first"]


def test_an_upstream_that_refuses_connections_is_skipped(serve_app: ServeApp) -> None:
    seen: list[dict[str, Any]] = []
    with serve_app(named_upstream("live", seen)) as live, proxy_in_front(serve_app, refusing_url(), live) as proxy:
        answers = [httpx.post(f"{proxy}/v1/chat/completions", json={"n": n}, timeout=30) for n in range(4)]
    assert [(a.status_code, a.json()["name"]) for a in answers] == [(200, "live")] * 4
    assert [request["body"] for request in seen] == [f'{{"n":{n}}}' for n in range(4)]


def test_when_no_upstream_accepts_the_proxy_answers_502(serve_app: ServeApp) -> None:
    with proxy_in_front(serve_app, refusing_url(), refusing_url()) as proxy:
        response = httpx.post(f"{proxy}/v1/chat/completions", json={}, timeout=30)
    assert response.status_code == 502
    assert response.json() == {
        "error": {"message": NO_UPSTREAM, "type": "server_error", "param": None, "code": "no_upstream"}
    }


def test_an_upstream_failing_after_taking_the_request_is_a_502_and_not_retried(serve_app: ServeApp) -> None:
    seen: list[dict[str, Any]] = []
    with (
        hanging_up_server() as (hanging_up, received),
        serve_app(named_upstream("live", seen)) as live,
        proxy_in_front(serve_app, hanging_up, live) as proxy,
    ):
        response = httpx.post(f"{proxy}/v1/chat/completions", json={"n": 1}, timeout=30)
    assert response.status_code == 502
    assert response.json()["error"] == {
        "message": UPSTREAM_FAILED,
        "type": "server_error",
        "param": None,
        "code": "upstream_failed",
    }
    assert len(received) == 1
    assert received[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert seen == []  # a request an upstream may have acted on is never sent twice


def test_a_body_over_the_limit_is_refused_before_any_upstream(serve_app: ServeApp) -> None:
    seen: list[dict[str, Any]] = []
    with (
        serve_app(named_upstream("a", seen)) as upstream,
        proxy_in_front(serve_app, upstream, max_body_bytes=1024) as proxy,
    ):
        response = httpx.post(f"{proxy}/v1/chat/completions", content=b"x" * 1025, timeout=30)
        streamed = httpx.post(f"{proxy}/v1/chat/completions", content=iter([b"x" * 1000, b"x" * 25]), timeout=30)
    assert (response.status_code, response.json()["error"]["message"]) == (413, TOO_LARGE)
    assert (streamed.status_code, streamed.json()["error"]["code"]) == (413, "request_too_large")
    assert seen == []


def test_the_client_address_is_appended_to_x_forwarded_for() -> None:
    raw = [(b"X-Forwarded-For", b"10.0.0.7"), (b"Connection", b"close"), (b"Authorization", b"Bearer k")]
    assert request_headers(raw, "127.0.0.1") == [
        (b"Authorization", b"Bearer k"),
        (b"x-forwarded-for", b"10.0.0.7, 127.0.0.1"),
    ]
    assert request_headers(raw, None) == [(b"Authorization", b"Bearer k"), (b"X-Forwarded-For", b"10.0.0.7")]


@pytest.mark.parametrize(
    ("upstreams", "message"),
    [
        ((), "Tuple should have at least 1 item after validation, not 0"),
        (("localhost:8000",), "'localhost:8000' must look like http://host:port (no query or fragment)"),
        (("http://a:1", "http://a:1/"), "each upstream may be named once"),
    ],
)
def test_upstreams_must_be_distinct_http_urls(upstreams: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match="upstreams") as raised:
        ProxyConfig(upstreams=upstreams)
    assert message in str(raised.value)
