"""``/healthz`` (serving and Kafka state), ``/readyz`` (ready for traffic) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from services.gateway.deps import ChatDep, ProducerDep, SettingsDep
from services.gateway.protocol import Health, Readiness
from services.http_access import public

router = APIRouter(tags=["health"], dependencies=[Depends(public)])  # open to probes and scrapers


@router.get("/healthz")
async def health(chat: ChatDep, producer: ProducerDep, settings: SettingsDep) -> Health:
    """Serving status, Kafka connectivity and the event backlog."""
    state = producer.health()
    return Health(
        status="ok" if state.connected else "degraded",
        model=chat.model_version,
        kafka_connected=state.connected,
        pending_events=state.pending_events,
        wal_bytes=state.wal_bytes,
        wal_max_bytes=state.wal_max_bytes,
        kafka_error=state.last_error,
        auth=settings.security.auth,
    )


@router.get("/readyz", response_model=Readiness)
async def ready(request: Request, chat: ChatDep) -> JSONResponse:
    """200 once the deployment state and the API keys were read and the champion can be served; 503 before.

    Bases loading for a challenger do not hold readiness back: the champion serves meanwhile.
    """
    state = chat.deployment
    caught_up = request.app.state.watcher.caught_up.is_set() and request.app.state.key_watcher.caught_up.is_set()
    is_ready = caught_up and chat.can_serve(state.champion)
    body = Readiness(
        ready=is_ready,
        champion=state.champion,
        challenger=state.challenger,
        phase=state.phase,
        deployment_id=state.deployment_id,
        bases_loading=chat.pool.loading,
        bases_loaded=chat.pool.loaded,
    )
    return JSONResponse(body.model_dump(), status_code=200 if is_ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
