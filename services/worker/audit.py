"""The worker's audit trail: every request to its API recorded, and ``GET /v1/audit`` for admins.

Every request to the worker's API is an audit event (``feedback.audit``), except its health probe
and the sink status and metrics that monitoring polls. What the worker does by itself is recorded with the
events of :mod:`services.worker.audit_events`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request

from feedback.audit import API_DOCS, AuditMiddleware, Outcome
from feedback.store import DuckDBStore
from services.worker.auth import Auditor
from services.worker.dashboard.routes import PAGE_PATHS
from services.worker.protocol import AuditRecord

ACTIONS: dict[tuple[str, str], str] = {
    ("GET", "/v1/summary"): "summary.read",
    ("GET", "/v1/interactions"): "interactions.read",
    ("POST", "/v1/analytics/query"): "analytics.query",
    ("GET", "/v1/reports/{experiment}"): "report.read",
    ("POST", "/v1/admin/refresh"): "refresh.start",
    ("GET", "/v1/refreshes"): "refresh.list",
    ("GET", "/v1/refreshes/{key}"): "refresh.read",
    ("GET", "/v1/audit"): "audit.query",
    ("GET", "/v1/dashboard/overview"): "dashboard.read",
    ("GET", "/v1/dashboard/experiments/{experiment}"): "dashboard.read",
    ("GET", "/v1/dashboard/experiments/{experiment}/shadow"): "dashboard.read",
    ("GET", "/v1/dashboard/models"): "dashboard.read",
    ("GET", "/v1/dashboard/refreshes"): "dashboard.read",
    ("GET", "/v1/dashboard/feedback"): "dashboard.read",
    ("POST", "/v1/dashboard/deployments/{action}"): "dashboard.deployment",
}
EXEMPT = ("/healthz", "/metrics", "/v1/sink/status", *PAGE_PATHS, *API_DOCS)

DEFAULT_LIMIT = 100  # rows GET /v1/audit returns without a limit (at most audit.query_max_rows)
FILTERS = ("actor", "action", "resource", "outcome")  # columns GET /v1/audit filters on, by equality
_SELECT = "SELECT event_id, ts, actor, action, resource, outcome, reason, details::VARCHAR AS details FROM audit"


def install_audit(app: FastAPI) -> None:
    """Record every request to ``app``."""
    app.add_middleware(AuditMiddleware, actions=ACTIONS, exempt=EXEMPT)


router = APIRouter()


@router.get("/v1/audit")
def audit_trail(
    request: Request,
    _: Auditor,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[str | None, Query(max_length=128)] = None,
    resource: Annotated[str | None, Query(max_length=1024)] = None,
    outcome: Outcome | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> list[AuditRecord]:
    """Audit events, newest first; ``action`` ending in ``*`` matches a prefix (``deployment.*``)."""
    most = request.app.state.settings.audit.query_max_rows
    limit = limit or min(DEFAULT_LIMIT, most)
    if limit > most:
        raise HTTPException(400, f"limit: at most {most} rows per request (audit.query_max_rows)")
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since >= until:
        raise HTTPException(400, "since must be earlier than until")
    filters = {"actor": actor, "action": action, "resource": resource, "outcome": outcome}
    rows = query_audit(request.app.state.store, filters, since=since, until=until, limit=limit)
    return [AuditRecord.model_validate(row) for row in rows]


def _utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is read as UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def query_audit(
    store: DuckDBStore,
    filters: Mapping[str, str | None],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit rows matching every given filter (``action`` ending in ``*``: a prefix), newest first."""
    clauses, params = ["true"], list[Any]()
    for column in FILTERS:
        value = filters.get(column)
        if value is None:
            continue
        prefix = column == "action" and value.endswith("*")
        clauses.append(f"starts_with({column}, ?)" if prefix else f"{column} = ?")
        params.append(value.removesuffix("*") if prefix else value)
    for clause, moment in (("ts >= ?", since), ("ts < ?", until)):
        if moment is not None:
            clauses.append(clause)
            params.append(moment)
    where = " AND ".join(clauses)  # column names come from FILTERS; every value is a parameter
    rows = store.query(f"{_SELECT} WHERE {where} ORDER BY ts DESC, event_id DESC LIMIT ?", [*params, limit])
    return [row | {"ts": row["ts"].astimezone(UTC), "details": json.loads(row["details"])} for row in rows]
