"""Answering chat requests, independent of HTTP.

A request is routed (:mod:`services.gateway.routing`) to the champion or, in an A/B ramp, to the
challenger; a sampled copy may go to a shadow challenger (:mod:`services.gateway.shadow`). The
served answer is recorded as an interaction event in the write-ahead log before a non-streaming
response returns, and right after a stream ends (also when the client went away).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from feedback.deployments import DeploymentState, initial_state
from feedback.events import Arm, InteractionEvent, Role
from feedback.ids import new_id
from feedback.model.runtime import Generation, SamplingParams
from feedback.producer import EventProducer
from feedback.settings import Settings
from feedback.signing import sign_id
from services.gateway.backend import ContextLengthError, GenerationRequest, InferenceBackend
from services.gateway.errors import (
    BACKEND_FAILED,
    ApiError,
    invalid_request,
    overloaded,
)
from services.gateway.feedback_service import publish
from services.gateway.metrics import GatewayMetrics
from services.gateway.protocol import ChatCompletionRequest
from services.gateway.routing import Route, choose_route
from services.gateway.scheduler import Overloaded
from services.gateway.shadow import ShadowRunner

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128  # completion budget when a request names none
DISCONNECTED = "client disconnected before the stream ended"


def assignment_unit(request: ChatCompletionRequest, headers: Mapping[str, str], request_id: str) -> str:
    """The unit of assignment: ``user``, else X-User-Id, else X-Session-Id, else the request id."""
    return request.user or headers.get("x-user-id") or headers.get("x-session-id") or request_id


@dataclass
class Exchange:
    """One request in flight: what was asked, how it was routed, and when it started."""

    request: ChatCompletionRequest
    params: SamplingParams
    request_id: str
    unit: str
    route: Route
    signed_id: str
    interaction_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    ttft_ms: float | None = None

    def generation_request(self, model_version: str, role: Role) -> GenerationRequest:
        """What a backend needs to answer this exchange with ``model_version``."""
        return GenerationRequest(tuple(self.request.messages), self.params, model_version, role)


class ChatService:
    """Routes, serves and records chat completions; shadows the challenger."""

    def __init__(
        self,
        backends: Sequence[InferenceBackend],
        champion: str,
        producer: EventProducer,
        settings: Settings,
        metrics: GatewayMetrics,
    ) -> None:
        self._backends = list(backends)
        self._producer = producer
        self._settings = settings
        self._metrics = metrics
        self.shadow = ShadowRunner(settings.gateway, metrics)
        self.deployment: DeploymentState = initial_state(champion, settings.gateway.ramp)

    @property
    def model_version(self) -> str:
        """The champion's model version."""
        return self.deployment.champion

    def backend_for(self, model_version: str) -> InferenceBackend:
        """The backend that serves ``model_version``."""
        for backend in self._backends:
            if backend.serves(model_version):
                return backend
        raise LookupError(f"no backend serves model version {model_version!r}")

    async def apply(self, state: DeploymentState) -> None:
        """Adopt a deployment state, loading its model versions first (a failed load is logged, not fatal)."""
        for version in filter(None, (state.champion, state.challenger)):
            try:
                await self.backend_for(version).load(version)
            except Exception:  # the state still holds; requests to this version record the error
                log.exception("could not load model version %s", version)
        self.deployment = state

    def open(self, request: ChatCompletionRequest, headers: Mapping[str, str], forced: Arm | None) -> Exchange:
        """Validate and route one request."""
        params = self._sampling_params(request)
        request_id = headers.get("x-request-id") or new_id()
        unit = assignment_unit(request, headers, request_id)
        route = choose_route(self.deployment, unit, forced=forced, draw=random.random())
        exchange = Exchange(request, params, request_id, unit, route, signed_id="")
        exchange.signed_id = sign_id(exchange.interaction_id, self._settings.security.signing_key)
        return exchange

    async def complete(self, exchange: Exchange) -> Generation:
        """Serve the exchange and log its event before returning; start its shadow copy."""
        request = exchange.generation_request(exchange.route.model_version, "served")
        self._check(request)
        self._start_shadow(exchange)
        try:
            generation = await self._generate(exchange, request)
        except ApiError as exc:
            if exc.status >= 500:
                self._record_served(exchange, None, exc.detail or exc.message)
            raise
        self._record_served(exchange, generation, None)
        return generation

    async def stream(self, exchange: Exchange) -> tuple[str, AsyncIterator[str | Generation]]:
        """Serve the exchange as text pieces, then its generation; the first piece has arrived on return.

        Errors before the first piece (prompt too long, overload) raise here, before any byte is sent.
        """
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()
        request = exchange.generation_request(exchange.route.model_version, "served")
        self._check(request)
        self._start_shadow(exchange)
        request = GenerationRequest(
            request.messages,
            request.params,
            request.model_version,
            "served",
            on_text=functools.partial(_put_from_thread, loop, pieces),
        )
        task = loop.create_task(self._generate(exchange, request))
        try:
            first = await _first_piece(pieces, task)
        except ApiError as exc:
            if exc.status >= 500:
                self._record_served(exchange, None, exc.detail or exc.message)
            raise
        exchange.ttft_ms = (time.perf_counter() - exchange.started) * 1000
        return exchange.signed_id, self._pieces(exchange, first, pieces, task)

    async def _pieces(
        self, exchange: Exchange, first: str | None, pieces: asyncio.Queue[str], task: asyncio.Task[Generation]
    ) -> AsyncIterator[str | Generation]:
        sent: list[str] = []
        try:
            if first is not None:
                sent.append(first)
                yield first
            while True:
                piece = await _first_piece(pieces, task)
                if piece is None:
                    break
                sent.append(piece)
                yield piece
            generation = task.result()
        except ApiError as exc:
            self._record_served(exchange, None, exc.detail or exc.message, "".join(sent))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            task.cancel()
            self._record_served(exchange, None, DISCONNECTED, "".join(sent))
            raise
        self._record_served(exchange, generation, None)
        yield generation

    def _check(self, request: GenerationRequest) -> None:
        try:
            self.backend_for(request.model_version).check(request)
        except ContextLengthError as exc:
            raise invalid_request(str(exc), "max_tokens") from exc
        except LookupError as exc:
            raise ApiError(503, BACKEND_FAILED, kind="server_error", detail=str(exc)) from exc

    async def _generate(self, exchange: Exchange, request: GenerationRequest) -> Generation:
        try:
            return await self.backend_for(request.model_version).generate(request)
        except ContextLengthError as exc:
            raise invalid_request(str(exc), "max_tokens") from exc
        except Overloaded as exc:
            raise overloaded(self._settings.gateway.retry_after_s) from exc
        except Exception as exc:  # any backend failure is recorded by the caller, then answered with a 503
            log.exception("backend failed for request %s", exchange.request_id)
            raise ApiError(503, BACKEND_FAILED, kind="server_error", detail=f"{type(exc).__name__}: {exc}") from exc

    def _start_shadow(self, exchange: Exchange) -> None:
        version = exchange.route.shadow_version
        if version is None:
            return
        try:
            backend = self.backend_for(version)
        except LookupError as exc:
            self._record(exchange, "challenger", "shadow", version, None, str(exc))
            return
        self.shadow.submit(
            backend,
            exchange.generation_request(version, "shadow"),
            lambda generation, error: self._record(exchange, "challenger", "shadow", version, generation, error),
        )

    def _sampling_params(self, request: ChatCompletionRequest) -> SamplingParams:
        served = self._settings.gateway.served_model_name
        if request.model != served:
            raise ApiError(
                404,
                f"model {request.model!r} is not served here; use {served!r}",
                kind="not_found_error",
                param="model",
            )
        limit = self._settings.model.max_new_tokens
        budget = request.token_budget() or min(DEFAULT_MAX_TOKENS, limit)
        if budget > limit:
            raise invalid_request(f"max_tokens: at most {limit} tokens may be requested", "max_tokens")
        return SamplingParams(
            max_tokens=budget,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop_strings(),
            seed=request.seed,
        )

    def _record_served(
        self, exchange: Exchange, generation: Generation | None, error: str | None, partial: str = ""
    ) -> None:
        route = exchange.route
        self._record(exchange, route.arm, "served", route.model_version, generation, error, partial)

    def _record(
        self,
        exchange: Exchange,
        arm: Arm,
        role: Role,
        model_version: str,
        generation: Generation | None,
        error: str | None,
        partial: str = "",
    ) -> None:
        latency_s = time.perf_counter() - exchange.started
        request = exchange.request
        event = InteractionEvent(
            interaction_id=exchange.interaction_id,
            request_id=exchange.request_id,
            unit_id=exchange.unit,
            arm=arm,
            role=role,
            model_version=model_version,
            deployment_id=exchange.route.state.deployment_id,
            phase=exchange.route.state.phase,
            messages=tuple(request.messages),
            completion=generation.text if generation else partial,
            prompt_tokens=generation.prompt_tokens if generation else 0,
            completion_tokens=generation.completion_tokens if generation else 0,
            latency_ms=latency_s * 1000,
            ttft_ms=exchange.ttft_ms if role == "served" else None,
            finish_reason=generation.finish_reason if generation else "error",
            confidence=generation.confidence if generation else None,
            error=error,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.token_budget(),
            seed=request.seed,
        )
        self._observe(arm, role, latency_s, event)
        publish(self._producer, self._settings.kafka.topics.interactions, event, self._metrics)

    def _observe(self, arm: Arm, role: Role, latency_s: float, event: InteractionEvent) -> None:
        self._metrics.latency.labels(arm=arm, role=role).observe(latency_s)
        self._metrics.tokens.labels(arm=arm, role=role).inc(event.completion_tokens)
        self._metrics.responses.labels(arm=arm, role=role, outcome="error" if event.error else "ok").inc()
        if event.ttft_ms is not None:
            self._metrics.ttft.labels(arm=arm).observe(event.ttft_ms / 1000)


def _put_from_thread(loop: asyncio.AbstractEventLoop, pieces: asyncio.Queue[str], text: str) -> None:
    loop.call_soon_threadsafe(pieces.put_nowait, text)


async def _first_piece(pieces: asyncio.Queue[str], task: asyncio.Task[Generation]) -> str | None:
    """The next piece of text, or None once the generation is over and every piece was taken."""
    while True:
        if not pieces.empty():
            return pieces.get_nowait()
        if task.done():
            await asyncio.sleep(0)  # let the last call_soon_threadsafe pieces land
            if pieces.empty():
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                return None
            continue
        getter = asyncio.ensure_future(pieces.get())
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
