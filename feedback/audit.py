"""The audit trail: who did what, when, to which resource, with what outcome, and why.

Every HTTP request to the gateway and the worker becomes one :class:`~feedback.events.AuditEvent`,
published through the service's event producer (write-ahead log, then Kafka's ``audit`` topic; the
worker's sink stores it in DuckDB's ``audit`` table). One ASGI middleware per app records it, so no
route can forget: it names the action from the matched route, takes the outcome from the status
(``allowed`` below 400, ``denied`` for 4xx, ``error`` for 5xx) and the reason from the error body,
and logs the event before the response's last byte goes out. A route adds what only it knows (the
interaction id, the deployment before and after, a query's row count) to the request's
:class:`AuditNote`. Work that no request starts (the decision engine, scheduled refreshes, the
retention purge) records its events with :meth:`AuditTrail.record` directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import Counter
from pydantic import JsonValue
from starlette.requests import Request
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedback.access import Principal
from feedback.deployments import DeploymentState
from feedback.errors import WalFullError
from feedback.events import AuditEvent
from feedback.producer import EventProducer

log = logging.getLogger(__name__)

Outcome = Literal["allowed", "denied", "error"]
ANONYMOUS = "anonymous"  # the actor of a request nobody authenticated
DECISION_ENGINE = "decision-engine"  # the principal of the worker's automatic decisions
CLIENT_LEFT = "the client went away before the response was complete"
_ERROR_BODY_BYTES = 64 * 1024  # an error body is read up to this size for its message
API_DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")  # FastAPI's own pages: never recorded

# the fields of a deployment state an audit event's before and after show
_SNAPSHOT = {
    "deployment_id",
    "revision",
    "champion",
    "challenger",
    "mode",
    "ramp_step",
    "shadow_sample_rate",
    "updated_by",
}
AUDIT_FAILURES = Counter("flywheel_audit_failures_total", "Audit events that could not be logged (event log full)")


class AuditTrail:
    """Publishes audit events durably: the producer's write-ahead log, then the audit topic."""

    def __init__(self, producer: EventProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    def record(self, event: AuditEvent) -> bool:
        """Log ``event``; False (logged loudly and counted) when the event log is full."""
        try:
            self._producer.publish(self._topic, event)
        except WalFullError as exc:
            AUDIT_FAILURES.inc()
            log.error("audit event %s on %s not logged: %s", event.action, event.resource, exc)
            return False
        return True


@dataclass
class AuditNote:
    """What a route adds to its request's audit event; the middleware fills in the rest."""

    resource: str | None = None  # what the action was on; default: the request path
    details: dict[str, JsonValue] = field(default_factory=dict)
    outcome: Outcome | None = None  # overrides the status's outcome (a stream that failed after its 200)
    reason: str | None = None  # why, when the response carries no error message (a stream that failed)
    finish: Callable[[AuditNote], None] | None = None  # called just before the event is logged


def note_of(request: Request) -> AuditNote:
    """The request's audit note (the middleware made it; a request outside it gets a throwaway one)."""
    note = getattr(request.state, "audit", None)
    if not isinstance(note, AuditNote):
        note = AuditNote()
        request.state.audit = note
    return note


def actor_of(request: Request) -> str:
    """Who made the request: its key's ``name (key_id)`` once the key was checked, else anonymous."""
    principal = getattr(request.state, "principal", None)
    return principal.label if isinstance(principal, Principal) else ANONYMOUS


def outcome_of(status: int) -> Outcome:
    """``allowed`` below 400, ``denied`` for a refusal (4xx), ``error`` for a failure (5xx)."""
    return "allowed" if status < 400 else "denied" if status < 500 else "error"


def error_message(body: bytes) -> str | None:
    """The message of an error body: OpenAI's ``error.message`` or FastAPI's ``detail``."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return body.decode("utf-8", errors="replace")[:1000] or None
    if not isinstance(data, dict):
        return None
    error, detail = data.get("error"), data.get("detail")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # request validation: "where: what" per problem
        return "; ".join(_validation_problem(item) for item in detail)
    return None


def _validation_problem(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc", ()))
    return f"{where}: {item.get('msg')}" if where else str(item.get("msg"))


def deployment_action(before: DeploymentState, after: DeploymentState) -> str:
    """The audit action of a change from ``before`` to ``after``."""
    if after.champion != before.champion:
        return "deployment.promote"
    if after.challenger is None and before.challenger is not None:
        return "deployment.rollback"
    return "deployment.set_challenger" if after.challenger != before.challenger else "deployment.set_mode"


def deployment_snapshot(state: DeploymentState) -> dict[str, JsonValue]:
    """A deployment state as an audit event's ``before`` or ``after``."""
    snapshot: dict[str, JsonValue] = state.model_dump(mode="json", include=_SNAPSHOT)
    return snapshot | {"phase": state.phase}


class AuditMiddleware:
    """ASGI middleware: one audit event per HTTP request, logged before the response's last byte.

    ``actions`` names the action of each route by ``(method, path template)``; a request that
    matches none is ``http.unmatched`` (each app's tests check that every route is named). Paths in
    ``exempt`` (health probes, metrics, API docs) are not recorded. The event goes to
    ``app.state.audit`` (an :class:`AuditTrail`) of the app in the scope.
    """

    def __init__(self, app: ASGIApp, actions: Mapping[tuple[str, str], str], exempt: Collection[str]) -> None:
        self._app = app
        # matched on the path itself, before routing: a request refused before it (413) is named too
        self._actions = [(method, compile_path(path)[0], action) for (method, path), action in actions.items()]
        self._exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._exempt:
            await self._app(scope, receive, send)
            return
        note = AuditNote()
        scope["state"] = {**scope.get("state", {}), "audit": note}  # a dict of this request's own
        pending = _Pending(self._action(scope["method"], scope["path"]), Request(scope), note)

        async def audited_send(message: Message) -> None:
            pending.observe(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                pending.emit()
            await send(message)

        try:
            await self._app(scope, receive, audited_send)
        except BaseException as exc:
            pending.fail(exc)
            raise
        finally:
            pending.emit()  # a client gone mid-stream, or an error: recorded once all the same

    def _action(self, method: str, path: str) -> str:
        for route_method, pattern, action in self._actions:
            if route_method == method and pattern.match(path):
                return action
        return "http.unmatched"


def _role(request: Request) -> dict[str, JsonValue]:
    principal = getattr(request.state, "principal", None)
    return {"role": principal.role} if isinstance(principal, Principal) else {}


class _Pending:
    """One request's audit event in the making."""

    def __init__(self, action: str, request: Request, note: AuditNote) -> None:
        self._action, self._request, self._note = action, request, note
        self._status: int | None = None
        self._error_body = bytearray()
        self._failure: str | None = None
        self._done = False

    def observe(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._status = int(message["status"])
        elif message["type"] == "http.response.body" and (self._status or 0) >= 400:
            room = _ERROR_BODY_BYTES - len(self._error_body)
            self._error_body += message.get("body", b"")[: max(room, 0)]

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self._failure = CLIENT_LEFT
        else:
            self._failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def emit(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._record()
        except Exception:  # a broken audit event must not break the response; it is logged and counted
            AUDIT_FAILURES.inc()
            log.exception("the audit event of %s %s could not be made", self._request.method, self._request.url.path)

    def _record(self) -> None:
        note, request = self._note, self._request
        if note.finish is not None:
            note.finish(note)
        # nothing sent: the client went away (499, as nginx logs it) or the app failed (500)
        gone = 500 if self._failure not in (None, CLIENT_LEFT) else 499
        status = self._status if self._status is not None else gone
        # the message the client got first, then the route's own reason (a stream failing after its 200)
        reason = (error_message(bytes(self._error_body)) if self._error_body else None) or note.reason or self._failure
        client = request.client.host if request.client else None
        event = AuditEvent(
            actor=actor_of(request)[:256],
            action=self._action,
            resource=(note.resource if note.resource is not None else request.url.path)[:1024],
            outcome=note.outcome or outcome_of(status),
            reason=reason[:10_000] if reason else None,
            details={"method": request.method, "path": request.url.path, "status": status, "client": client}
            | _role(request)
            | note.details,
        )
        trail = getattr(request.app.state, "audit", None)
        if isinstance(trail, AuditTrail):
            trail.record(event)
