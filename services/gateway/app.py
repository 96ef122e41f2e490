"""The gateway application: OpenAI-compatible chat, feedback, deployments admin, health and metrics.

Long-lived objects (model backends, write-ahead log, event producer, deployment and key watchers,
metrics) are built in the lifespan and kept on ``app.state``; routes reach them through
``services.gateway.deps``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from feedback.apikeys import KeyBook, KeyWatcher
from feedback.audit import AuditTrail
from feedback.content import ContentFilter, build_filter
from feedback.deployments import DeploymentState, DeploymentWatcher
from feedback.model.runtime import ModelRuntime
from feedback.model.source import prepare_model
from feedback.producer import open_producer
from feedback.registry_remote import open_registry
from feedback.settings import Settings, get_settings
from services.gateway.audit import install_audit
from services.gateway.backend import InferenceBackend, TransformersBackend
from services.gateway.body_limit import BodyLimit
from services.gateway.deploying import DeploymentControl
from services.gateway.errors import install_error_handlers
from services.gateway.feedback_service import FeedbackService
from services.gateway.limits import KeyLimits
from services.gateway.metrics import GatewayMetrics
from services.gateway.moderation import ContentGuard
from services.gateway.pool import BackendPool, OpenBase
from services.gateway.routes import admin, chat, feedback, health
from services.gateway.serving import ChatService
from services.gateway.shared_engine import EngineClient
from services.gateway.vllm_backend import VLLMBackend
from services.http_access import AuthOffHeader, warn_if_auth_off

log = logging.getLogger(__name__)

STARTUP_WAIT_S = 5.0  # at start, wait this long to read the deployments and keys topics to their end


def load_backend(
    settings: Settings, source: str | None = None, *, shared: EngineClient | None = None
) -> InferenceBackend:
    """A backend on the model ``source`` (default: the configured model), converted once and loaded from the cache.

    ``gateway.backend`` picks the engine: the transformers runtime, or vLLM (whose engine loads the
    weights itself when the backend starts, unless ``shared`` names the engine the gateway's parent
    process started: services.gateway.shared_engine).
    """
    model = settings.model
    model_dir = prepare_model(source or model.source, model.cache_dir)
    registry = open_registry(model)  # adapters missing locally come from model.registry_url, if set
    if settings.gateway.backend == "vllm":
        return VLLMBackend(model_dir, settings.gateway, registry, shared=shared)
    runtime = ModelRuntime.load(model_dir, device=model.device, dtype=model.dtype, threads=model.threads)
    return TransformersBackend(runtime, settings.gateway, registry)


def create_app(
    settings: Settings | None = None,
    backend: InferenceBackend | None = None,
    *,
    champion: str | None = None,
    extra_backends: Sequence[InferenceBackend] = (),
    open_base: OpenBase | None = None,
    keys: KeyBook | None = None,
) -> FastAPI:
    """Build the gateway.

    ``backend`` replaces the configured model (tests, other engines); ``champion`` names its
    model version (default: the transformers backend's base model); ``extra_backends`` serve
    challengers on other base models. A deployment naming a base that none of them serves loads
    it with ``open_base`` (default: from that model source, with the configured model settings;
    see :mod:`services.gateway.pool`). ``keys`` starts the key book with these records (tests whose
    Kafka is unreachable); the keys topic adds to it either way.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or get_settings()
        main = backend or load_backend(resolved)
        pool = BackendPool([main, *extra_backends], open_base or functools.partial(load_backend, resolved))
        metrics = GatewayMetrics()
        await pool.start(metrics)
        producer = open_producer(resolved, resolved.gateway.wal.dir)
        producer.start()
        app.state.audit = AuditTrail(producer, resolved.kafka.topics.audit)
        guard = ContentGuard(content_filter(resolved), resolved, producer, metrics)
        chat_service = ChatService(pool, champion or _base_name(main), producer, resolved, metrics, guard)
        watcher = DeploymentWatcher(resolved.kafka, chat_service.deployment, _applier(chat_service))
        watcher.start()
        key_watcher = KeyWatcher(resolved.kafka, keys if keys is not None else KeyBook())
        key_watcher.start()
        warn_if_auth_off(resolved, "gateway")
        app.state.settings, app.state.producer, app.state.metrics = resolved, producer, metrics
        per_key = resolved.gateway.limits
        app.state.limits = KeyLimits(per_key.rate_per_s, per_key.burst, per_key.max_in_flight)
        app.state.keys, app.state.key_watcher = key_watcher.book, key_watcher
        app.state.chat, app.state.watcher = chat_service, watcher
        app.state.feedback = FeedbackService(producer, resolved, metrics)
        app.state.control = DeploymentControl(watcher, chat_service, resolved)
        await asyncio.to_thread(watcher.caught_up.wait, STARTUP_WAIT_S)
        await asyncio.to_thread(key_watcher.caught_up.wait, STARTUP_WAIT_S)
        log.info("gateway ready: %s, Kafka %s", chat_service.deployment.phase, resolved.kafka.bootstrap_servers)
        try:
            yield
        finally:
            await asyncio.to_thread(watcher.close)
            await asyncio.to_thread(key_watcher.close)
            await chat_service.shadow.close()
            await pool.close()
            producer.close(timeout_s=resolved.gateway.drain_timeout_s)

    app = FastAPI(title="flywheel gateway", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=lambda: (settings or get_settings()).gateway.max_body_bytes)
    app.add_middleware(AuthOffHeader)
    install_error_handlers(app)
    install_audit(app)
    for module in (chat, feedback, admin, health):
        app.include_router(module.router)
    return app


def content_filter(settings: Settings) -> ContentFilter | None:
    """The configured content filter, or None when it is off (a bad term list or a missing model fails the start)."""
    if not settings.content_filter.enabled:
        return None
    return build_filter(settings.content_filter, settings.model.cache_dir)


def _base_name(backend: InferenceBackend) -> str:
    base = getattr(backend, "base", None) or getattr(backend, "model_version", None)
    if not isinstance(base, str):
        raise TypeError("pass champion= for a backend that names no base model")
    return base


def _applier(chat_service: ChatService) -> Callable[[DeploymentState], None]:
    """Apply states from the watcher's thread on the event loop (loading adapters while serving)."""
    loop = asyncio.get_running_loop()

    def apply(state: DeploymentState) -> None:
        asyncio.run_coroutine_threadsafe(chat_service.apply(state), loop).result()

    return apply
