"""Hand one request to the next upstream in turn, falling through those that refuse the connection.

A connection refused (or not accepted within the connect timeout) means the upstream never saw
the request, so the same request goes to the next upstream. Once an upstream accepted the
connection nothing is retried: a chat completion may already be generating, and sending it again
would serve it twice. The answer comes back unread, as a stream, for the caller to relay.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx

from services.proxy.errors import UpstreamBroke, no_upstream, upstream_failed, upstream_timeout
from services.proxy.headers import Raw
from services.proxy.rotation import RoundRobin

log = logging.getLogger(__name__)

NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout)  # the upstream never saw the request


class Forwarder:
    """Sends requests to upstreams in round-robin order over one connection pool."""

    def __init__(self, client: httpx.AsyncClient, rotation: RoundRobin) -> None:
        self._client = client
        self._rotation = rotation

    async def open(self, method: str, target: str, headers: Raw, body: bytes) -> httpx.Response:
        """The answer of the first upstream (in turn) that accepts the connection, its body not read yet.

        ``target`` is the path with its query string. Raises ProxyError: 502 when every upstream
        refused, 502 or 504 when the one that took the request failed or timed out before answering.
        """
        for upstream in self._rotation.order():
            request = self._client.build_request(method, f"{upstream}{target}", headers=headers, content=body)
            try:
                return await self._client.send(request, stream=True)
            except NOTHING_SENT as exc:
                log.warning("upstream %s refused the connection (%s); trying the next one", upstream, exc)
            except httpx.TimeoutException as exc:
                log.warning("upstream %s timed out before answering %s %s: %r", upstream, method, target, exc)
                raise upstream_timeout() from exc
            except httpx.TransportError as exc:
                log.warning("upstream %s failed before answering %s %s: %r", upstream, method, target, exc)
                raise upstream_failed() from exc
        log.error("no upstream accepted the connection for %s %s", method, target)
        raise no_upstream()


async def relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    """The answer's bytes as the upstream sends them (still encoded, so Content-Length holds).

    A failure midway raises UpstreamBroke, which makes the server close the client's connection.
    """
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    except httpx.TransportError as exc:
        log.warning("upstream %s broke off its answer: %r", answer.request.url, exc)
        raise UpstreamBroke(str(exc)) from exc
