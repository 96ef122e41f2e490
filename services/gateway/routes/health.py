"""``/healthz``: the gateway serves whenever the model is loaded; Kafka's state is a flag."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.gateway.deps import ProducerDep
from services.gateway.protocol import Health

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def health(request: Request, producer: ProducerDep) -> Health:
    """Serving status, Kafka connectivity and the event backlog."""
    state = producer.health()
    return Health(
        status="ok" if state.connected else "degraded",
        model=request.app.state.chat.model_version,
        kafka_connected=state.connected,
        pending_events=state.pending_events,
        wal_bytes=state.wal_bytes,
        wal_max_bytes=state.wal_max_bytes,
        kafka_error=state.last_error,
    )
