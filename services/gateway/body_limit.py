"""Refuse request bodies over ``gateway.max_body_bytes`` with a 413 before any route reads them."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import too_large


class BodyLimit:
    """ASGI middleware: a Content-Length over the limit, or a streamed body growing past it, gets a 413."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limit = self._limit()
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(limit, scope, receive, send)
            return
        if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # A chunked body: read it here (bounded) and hand the route what was read.
            messages, size = [], 0
            while True:
                message = await receive()
                messages.append(message)
                size += len(message.get("body", b""))
                if size > limit:
                    await self._refuse(limit, scope, receive, send)
                    return
                if not message.get("more_body", False):
                    break
            receive = _replay(messages, receive)
        await self._app(scope, receive, send)

    @staticmethod
    async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        error = too_large(limit)
        body = {"error": {"message": error.message, "type": error.kind, "param": None, "code": None}}
        await JSONResponse(body, status_code=413)(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
