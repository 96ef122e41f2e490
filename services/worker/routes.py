"""The worker's HTTP API: health, metrics, and read-only views of the live DuckDB file."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from prometheus_client import CONTENT_TYPE_LATEST

from evaluation.summary import arm_summary
from feedback.access import Permission
from feedback.audit import note_of
from feedback.errors import QueryFailed, QueryRefused, QueryTimeout
from feedback.sandbox import QueryLimits, run_query
from services.http_access import public
from services.worker.auth import Analyst, Operator, RawReader, Reader
from services.worker.protocol import AnalyticsQuery, AnalyticsResult, SinkStatus
from services.worker.status import sink_status

router = APIRouter()

RECENT_SQL = """
SELECT i.interaction_id, i.ts, i.arm, i.role, i.model_version, i.unit_id,
       i.messages, i.completion, i.completion_tokens, i.latency_ms, i.confidence, i.finish_reason,
       f.feedback_id, f.thumb, f.rating, f.comment, f.correction
FROM interactions i LEFT JOIN feedback f USING (interaction_id)
WHERE len(?::VARCHAR[]) = 0 OR list_contains(?::VARCHAR[], i.interaction_id)
ORDER BY i.ts DESC LIMIT ?
"""


@router.get("/healthz", dependencies=[Depends(public)])
async def health(request: Request) -> dict[str, Any]:
    """The sink's counters since start, and whether routes check API keys (``auth``: keys or off)."""
    return {
        "status": "ok",
        "sink": asdict(request.app.state.sink.stats),
        "auth": request.app.state.settings.security.auth,
    }


@router.get("/metrics", dependencies=[Depends(public)])
def metrics(request: Request) -> Response:
    """Prometheus text exposition (the lag asks Kafka, so this runs off the event loop)."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/summary")
def summary(request: Request, _: Reader) -> list[dict[str, Any]]:
    """Per-arm counts and means of everything stored."""
    return [asdict(row) | {"positive_rate": row.positive_rate} for row in arm_summary(request.app.state.store)]


@router.get("/v1/interactions")
def recent_interactions(
    request: Request,
    _: RawReader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    interaction_id: Annotated[list[str] | None, Query(max_length=1000)] = None,
) -> list[dict[str, Any]]:
    """The latest stored interactions with their feedback (raw text: admins), optionally only the given (raw) ids."""
    ids = interaction_id or []
    rows: list[dict[str, Any]] = request.app.state.store.query(RECENT_SQL, [ids, ids, limit])
    return rows


@router.get("/v1/sink/status")
def status(request: Request, _: Operator) -> SinkStatus:
    """Consumer lag per partition, rows ingested, dead letters and the last commit."""
    state = request.app.state
    return sink_status(state.end_offsets, state.sink.topics, state.store, state.sink.stats)


@router.post("/v1/analytics/query")
def analytics_query(request: Request, body: AnalyticsQuery, who: Analyst) -> AnalyticsResult:
    """Analyst SQL over the lake, in the sandbox; raw-text views only for roles that may read raw text."""
    settings = request.app.state.settings
    admin = who.can(Permission.RAW_TEXT)
    note = note_of(request)
    note.details |= {"sql": body.sql, "raw_text": admin}
    worker = settings.worker
    limits = QueryLimits(worker.query_timeout_s, worker.query_memory_limit, body.max_rows or worker.query_max_rows)
    try:
        result = run_query(body.sql, worker.lake_dir, admin=admin, limits=limits)
    except QueryRefused as exc:
        raise HTTPException(403, f"query refused: {exc}") from exc
    except QueryTimeout as exc:
        raise HTTPException(408, f"query timed out: {exc}") from exc
    except QueryFailed as exc:
        raise HTTPException(400, f"query failed: {exc}") from exc
    rows = jsonable_encoder(result.table.to_pylist())
    note.details |= {"rows": len(rows), "truncated": result.truncated}
    return AnalyticsResult(columns=result.table.column_names, rows=rows, truncated=result.truncated)
