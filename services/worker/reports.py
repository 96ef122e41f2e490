"""``GET /v1/reports/{experiment}``: the A/B report on the live DuckDB file, cached for dashboards.

A report is cached per (experiment, metrics, split, format) for ``CACHE_SECONDS``, so a dashboard
polling every few seconds costs one computation per interval. Bad input answers 404 (unknown
experiment) or 400 (unknown metric, arm without data, bad split) with the message; both are in
the OpenAPI schema (422 stays FastAPI's own: a parameter of the wrong shape).
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from evaluation.config import ExperimentSettings
from evaluation.errors import EvaluationError, UnknownExperimentError
from evaluation.html import render_html
from evaluation.metrics import Queryable, parse_split
from evaluation.report import build_report, require_arms, to_json
from services.worker.auth import Reader

router = APIRouter()

CACHE_SECONDS = 30.0  # how long a computed report is served before it is computed again


class ReportCache:
    """Computed reports by key, each valid for ``ttl`` seconds."""

    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[Any, ...], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        """The cached report, if still fresh."""
        with self._lock:
            entry = self._entries.get(key)
        return entry[1] if entry and time.monotonic() - entry[0] < self.ttl else None

    def put(self, key: tuple[Any, ...], value: dict[str, Any]) -> None:
        """Store a freshly computed report."""
        with self._lock:
            self._entries[key] = (time.monotonic(), value)


_cache = ReportCache()


def report_json(
    db: Queryable, settings: ExperimentSettings, experiment: str, metrics: list[str] | None = None,
    split: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The report as JSON-safe data, as this API and the dashboard serve it; raises ``EvaluationError``."""
    expected = parse_split(split) if split else None
    report = build_report(db, experiment, settings, metrics=metrics or None, split=expected)
    require_arms(report)
    return to_json(report)


def compute(request: Request, experiment: str, metrics: list[str], split: str | None) -> dict[str, Any]:
    """The report as JSON-safe data; evaluation errors become 404/400."""
    try:
        return report_json(request.app.state.store, request.app.state.settings.experiment, experiment, metrics, split)
    except UnknownExperimentError as exc:
        raise HTTPException(404, str(exc)) from exc
    except EvaluationError as exc:
        raise HTTPException(400, str(exc)) from exc


class Refusal(BaseModel):
    """Why the report could not be made."""

    detail: str


@router.get(
    "/v1/reports/{experiment}",
    responses={
        400: {"model": Refusal, "description": "unknown metric, arm without data, bad split"},
        404: {"model": Refusal, "description": "unknown experiment"},
    },
)
def experiment_report(
    request: Request,
    experiment: str,
    _: Reader,
    metric: Annotated[list[str] | None, Query(max_length=50)] = None,
    split: Annotated[str | None, Query(max_length=20)] = None,
    fmt: Annotated[str, Query(alias="format", pattern="^(json|html)$")] = "json",
) -> Response:
    """The experiment's report as JSON (default) or a self-contained HTML page, cached."""
    key = (experiment, tuple(metric or ()), split)
    data = _cache.get(key)
    cached = data is not None
    if data is None:
        data = compute(request, experiment, list(metric or ()), split)
        _cache.put(key, data)
    headers = {"X-Report-Cache": "hit" if cached else "miss"}
    if fmt == "html":
        return HTMLResponse(render_html(data), headers=headers)
    return JSONResponse(data, headers=headers)
