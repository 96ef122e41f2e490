"""The gateway application: OpenAI-compatible chat, feedback and health.

Long-lived objects (model backend, write-ahead log, event producer) are built in the lifespan
and kept on ``app.state``; routes reach them through ``services.gateway.deps``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from feedback.model.runtime import ModelRuntime
from feedback.model.source import prepare_model
from feedback.producer import EventProducer, kafka_sender_factory
from feedback.settings import Settings, get_settings
from feedback.wal import WriteAheadLog
from services.gateway.backend import InferenceBackend, TransformersBackend
from services.gateway.errors import install_error_handlers
from services.gateway.routes import chat, feedback, health
from services.gateway.serving import ChatService, FeedbackService

log = logging.getLogger(__name__)


def load_backend(settings: Settings) -> InferenceBackend:
    """The champion's backend: the configured model, converted once and loaded from the cache."""
    model = settings.model
    model_dir = prepare_model(model.source, model.cache_dir)
    runtime = ModelRuntime.load(model_dir, device=model.device, dtype=model.dtype, threads=model.threads)
    return TransformersBackend(runtime)


def open_producer(settings: Settings) -> EventProducer:
    """The write-ahead log and the producer that drains it into Kafka."""
    wal_settings = settings.gateway.wal
    wal = WriteAheadLog(
        wal_settings.dir,
        max_bytes=wal_settings.max_bytes,
        segment_bytes=wal_settings.segment_bytes,
        fsync_each=wal_settings.fsync_interval_ms == 0,
    )
    return EventProducer(
        wal, kafka_sender_factory(settings.kafka), fsync_interval_s=wal_settings.fsync_interval_ms / 1000
    )


def create_app(settings: Settings | None = None, backend: InferenceBackend | None = None) -> FastAPI:
    """Build the gateway; ``backend`` replaces the configured model (tests, other engines)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or get_settings()
        champion = backend or load_backend(resolved)
        producer = open_producer(resolved)
        producer.start()
        app.state.settings = resolved
        app.state.producer = producer
        app.state.chat = ChatService(champion, producer, resolved)
        app.state.feedback = FeedbackService(producer, resolved)
        log.info("gateway ready: model %s, Kafka %s", app.state.chat.model_version, resolved.kafka.bootstrap_servers)
        try:
            yield
        finally:
            producer.close(timeout_s=resolved.gateway.drain_timeout_s)

    app = FastAPI(title="flywheel gateway", lifespan=lifespan)
    install_error_handlers(app)
    for module in (chat, feedback, health):
        app.include_router(module.router)
    return app
