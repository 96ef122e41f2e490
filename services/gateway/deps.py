"""One-line dependencies that reach the long-lived objects the lifespan put on ``app.state``.

They are coroutines: FastAPI runs a plain function dependency in its thread pool, two thread hand-offs
per chat request for a dictionary look-up each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from feedback.access import Principal
from feedback.producer import EventProducer
from feedback.settings import Settings
from services.gateway.deploying import DeploymentControl
from services.gateway.errors import key_limited
from services.gateway.feedback_service import FeedbackService
from services.gateway.limits import KeyLimits, Limited
from services.gateway.metrics import GatewayMetrics
from services.gateway.serving import ChatService


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _chat(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


async def _feedback(request: Request) -> FeedbackService:
    service: FeedbackService = request.app.state.feedback
    return service


async def _producer(request: Request) -> EventProducer:
    producer: EventProducer = request.app.state.producer
    return producer


async def _control(request: Request) -> DeploymentControl:
    control: DeploymentControl = request.app.state.control
    return control


def admit(request: Request, who: Principal, *, hold: bool = True) -> Callable[[], None]:
    """Admit one request of ``who``'s key (its release, to call when the request ended), or the 429.

    ``hold=False``: the request only counts against the key's rate, not its requests in flight.
    """
    limits: KeyLimits = request.app.state.limits
    try:
        return limits.take(who.key_id, hold=hold)
    except Limited as why:
        metrics: GatewayMetrics = request.app.state.metrics
        metrics.key_limited.labels(reason=why.reason).inc()
        settings: Settings = request.app.state.settings
        raise key_limited(why, settings.gateway.limits) from None


SettingsDep = Annotated[Settings, Depends(_settings)]
ChatDep = Annotated[ChatService, Depends(_chat)]
FeedbackDep = Annotated[FeedbackService, Depends(_feedback)]
ProducerDep = Annotated[EventProducer, Depends(_producer)]
ControlDep = Annotated[DeploymentControl, Depends(_control)]
