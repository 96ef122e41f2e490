"""One-line dependencies that reach the long-lived objects the lifespan put on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from feedback.producer import EventProducer
from feedback.settings import Settings
from services.gateway.deploying import DeploymentControl
from services.gateway.feedback_service import FeedbackService
from services.gateway.serving import ChatService


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _chat(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


def _feedback(request: Request) -> FeedbackService:
    service: FeedbackService = request.app.state.feedback
    return service


def _producer(request: Request) -> EventProducer:
    producer: EventProducer = request.app.state.producer
    return producer


def _control(request: Request) -> DeploymentControl:
    control: DeploymentControl = request.app.state.control
    return control


SettingsDep = Annotated[Settings, Depends(_settings)]
ChatDep = Annotated[ChatService, Depends(_chat)]
FeedbackDep = Annotated[FeedbackService, Depends(_feedback)]
ProducerDep = Annotated[EventProducer, Depends(_producer)]
ControlDep = Annotated[DeploymentControl, Depends(_control)]
