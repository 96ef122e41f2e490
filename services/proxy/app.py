"""The proxy's ASGI app: every path and method goes to the next gateway replica; answers stream back.

Request bodies are read whole (up to ``max_body_bytes``) so that a request can be sent again to
the next upstream when one refuses the connection (:mod:`services.proxy.forwarding`). Answers
are relayed chunk by chunk as they arrive, server-sent events included, with the upstream's
status and end-to-end headers (:mod:`services.proxy.headers`). The proxy keeps no state but its
turn counter and its connection pool, so several proxies may front the same replicas.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.proxy.config import ProxyConfig
from services.proxy.errors import ProxyError, too_large
from services.proxy.forwarding import Forwarder, relay
from services.proxy.headers import answer_headers, request_headers
from services.proxy.rotation import RoundRobin

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class RelayedAnswer(StreamingResponse):
    """An upstream's answer relayed as it comes; the upstream response is closed however the relay ends."""

    def __init__(self, answer: httpx.Response) -> None:
        super().__init__(relay(answer), status_code=answer.status_code)
        self.raw_headers = answer_headers(answer.headers.raw)
        self._answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # the client left, the upstream broke off, or the answer ended: free the connection
            await self._answer.aclose()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, or ProxyError 413 past ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large()
    return bytes(body)


async def forward(request: Request) -> Response:
    """Send the request to the next upstream that accepts it and relay its answer."""
    forwarder: Forwarder = request.app.state.forwarder
    config: ProxyConfig = request.app.state.config
    try:
        body = await read_body(request, config.max_body_bytes)
        target = request.scope.get("raw_path") or request.url.path.encode()
        if query := request.scope.get("query_string"):
            target += b"?" + query
        headers = request_headers(request.headers.raw, request.client.host if request.client else None)
        answer = await forwarder.open(request.method, target.decode("latin-1"), headers, body)
    except ProxyError as exc:
        return exc.response()
    except ClientDisconnect:
        return Response(status_code=400)  # the client left while sending; no one reads this
    return RelayedAnswer(answer)


def create_app(config: ProxyConfig) -> Starlette:
    """The proxy in front of ``config.upstreams``; its connection pool lives as long as the app."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s, pool=None)
        limits = httpx.Limits(max_connections=config.max_connections, max_keepalive_connections=config.max_connections)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False) as client:
            client.headers.clear()  # no User-Agent or Accept-Encoding of httpx's own: the client's pass as they are
            app.state.config = config
            app.state.forwarder = Forwarder(client, RoundRobin(config.upstreams))
            yield

    return Starlette(routes=[Route("/{path:path}", forward, methods=METHODS)], lifespan=lifespan)
