"""What the gateway and the worker share to enforce access: a dependency per permission, a marker for
public routes, and the ``X-Flywheel-Auth: off`` header while checks are off.

Each service reaches its key book on ``app.state.keys`` and its settings on ``app.state.settings``,
and gives :func:`requirement` its own way to answer a refusal (the gateway in OpenAI's error shape,
the worker as FastAPI's ``{"detail": ...}``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedback.access import AUTH_OFF, Permission, Principal
from feedback.apikeys import KeyBook, authenticate_header
from feedback.errors import AccessError, NotAuthenticated, NotPermitted
from feedback.settings import Settings

log = logging.getLogger(__name__)

AUTH_HEADER = "X-Flywheel-Auth"  # "off" on every response while security.auth is off
CHALLENGE = {"WWW-Authenticate": "Bearer"}  # sent with every 401

Refuse = Callable[[int, AccessError], Exception]  # (401 or 403, why) -> the exception the service raises
Requirement = Callable[[Request], Awaitable[Principal]]


def principal_of(request: Request) -> Principal:
    """Who the request acts as (NotAuthenticated when its key is missing, malformed, unknown or revoked)."""
    settings: Settings = request.app.state.settings
    if settings.security.auth == "off":
        return AUTH_OFF
    book: KeyBook = request.app.state.keys
    return authenticate_header(book, request.headers.get("authorization"))


def requirement(permission: Permission, refuse: Refuse) -> Requirement:
    """A route dependency: the principal when it holds ``permission`` (also on ``request.state.principal``)."""

    async def dependency(request: Request) -> Principal:  # a coroutine: FastAPI runs a plain function in a thread
        try:
            principal = principal_of(request)
        except NotAuthenticated as exc:
            raise refuse(401, exc) from exc
        request.state.principal = principal  # who asked, also when refused (the audit trail names them)
        try:
            return principal.require(permission)
        except NotPermitted as exc:
            raise refuse(403, exc) from exc

    dependency.permission = permission  # type: ignore[attr-defined]  # read by the permission matrix tests
    return dependency


def warn_if_auth_off(settings: Settings, service: str) -> None:
    """Say loudly at startup that no route checks keys (``security.auth = "off"``, development only)."""
    if settings.security.auth == "off":
        log.warning(
            '%s: AUTHENTICATION IS OFF (security.auth = "off"): every request acts as an admin without a key; '
            "development only, every response carries %s: off",
            service,
            AUTH_HEADER,
        )


async def public() -> None:
    """The dependency of a route anyone may call (health, readiness, metrics)."""


class AuthOffHeader:
    """ASGI middleware: with ``security.auth = "off"``, every response carries ``X-Flywheel-Auth: off``."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings: Settings | None = getattr(scope["app"].state, "settings", None) if "app" in scope else None
        if scope["type"] != "http" or settings is None or settings.security.auth != "off":
            await self._app(scope, receive, send)
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (AUTH_HEADER.lower().encode(), b"off")]
            await send(message)

        await self._app(scope, receive, marked)
