"""Answering chat requests, independent of HTTP.

A request is routed (:mod:`services.gateway.routing`) to the champion or, in an A/B ramp, to the
challenger; a sampled copy may go to a shadow challenger (:mod:`services.gateway.shadow`). The
served answer is recorded as an interaction event in the write-ahead log before a non-streaming
response returns, and right after a stream ends (also when the client went away).

An A/B challenger never shows the user an error: when it fails, hangs or answers garbage before
its first piece of text, the champion answers. The event stays in the challenger arm
(intention-to-treat), its ``error`` says what the challenger did, and its ``model_version`` (with
completion, token counts and confidence) is the champion's, the version that actually answered.

The content filter (:mod:`services.gateway.moderation`) refuses a blocked prompt in :meth:`open`
and screens the answer that is served, whoever made it; a blocked answer's event has
``finish_reason="content_filter"``, the text the user got as its completion and no confidence
(that text is not the model's, so selection never trains on it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from feedback.content import CLEAN, ContentVerdict
from feedback.deployments import DeploymentState, initial_state
from feedback.events import Arm, FinishReason, InteractionEvent, Role
from feedback.ids import new_id
from feedback.model.runtime import Generation, SamplingParams
from feedback.producer import EventProducer
from feedback.settings import Settings
from feedback.signing import sign_id
from services.gateway.backend import ContextLengthError, GenerationRequest
from services.gateway.errors import (
    BACKEND_FAILED,
    STREAM_FAILED,
    ApiError,
    invalid_request,
    overloaded,
)
from services.gateway.fallback import ChallengerBreaker, fallback_error, invalid_answer, silent
from services.gateway.feedback_service import publish
from services.gateway.metrics import GatewayMetrics
from services.gateway.moderation import ContentGuard
from services.gateway.pool import BackendPool
from services.gateway.protocol import ChatCompletionRequest
from services.gateway.routing import Route, choose_route
from services.gateway.scheduler import Overloaded
from services.gateway.shadow import ShadowRunner
from services.gateway.streaming import (
    ContentStopped,
    RunningStream,
    StreamFailure,
    StreamItem,
    first_piece,
    next_piece,
    start_stream,
)

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
    answered_by: str = ""  # the model version whose answer the user got
    fallback: str | None = None  # why the A/B challenger did not answer, when the champion did
    served_error: str | None = None  # why the served answer failed (the user got an error or half a stream)
    shown: str | None = None  # when the content filter blocked the served answer: the text the user got instead

    def generation_request(self, model_version: str, role: Role) -> GenerationRequest:
        """What a backend needs to answer this exchange with ``model_version``."""
        return GenerationRequest(tuple(self.request.messages), self.params, model_version, role)


class ChatService:
    """Routes, serves and records chat completions; shadows the challenger; falls back to the champion."""

    def __init__(
        self,
        pool: BackendPool,
        champion: str,
        producer: EventProducer,
        settings: Settings,
        metrics: GatewayMetrics,
        guard: ContentGuard,
    ) -> None:
        self.pool = pool
        self._producer = producer
        self._settings = settings
        self._metrics = metrics
        self.guard = guard
        self.shadow = ShadowRunner(settings.gateway, metrics)
        self.breaker = ChallengerBreaker()
        self.deployment: DeploymentState = initial_state(champion, settings.gateway.ramp)

    @property
    def model_version(self) -> str:
        """The champion's model version."""
        return self.deployment.champion

    def can_serve(self, model_version: str) -> bool:
        """Whether a backend serves ``model_version`` now."""
        try:
            self.pool.backend_for(model_version)
        except LookupError:
            return False
        return True

    async def load(self, model_version: str) -> None:
        """Make ``model_version`` servable (its base model and adapter), while serving goes on."""
        await self.pool.load(model_version)

    async def apply(self, state: DeploymentState) -> None:
        """Adopt a deployment state, loading its model versions first (a failed load is logged, not fatal).

        A challenger that failed to load still takes its place in the state, so every replica
        agrees on the phase: its A/B users get the champion's answer (recorded as a fallback) and
        its shadow copies record the error. Bases no longer deployed are released.
        """
        for version in filter(None, (state.champion, state.challenger)):
            try:
                await self.pool.load(version)
            except Exception:  # counted by the pool; requests to this version record the error
                log.exception("could not load model version %s", version)
        self.deployment = state
        await self.pool.retain((state.champion, state.challenger))

    def open(self, request: ChatCompletionRequest, headers: Mapping[str, str], forced: Arm | None) -> Exchange:
        """Validate, screen and route one request; a blocked prompt raises the content filter's 400."""
        params = self._sampling_params(request)
        request_id = headers.get("x-request-id") or new_id()
        unit = assignment_unit(request, headers, request_id)
        self.guard.check_prompt(request.messages, unit, request_id)
        route = choose_route(self.deployment, unit, forced=forced, draw=random.random())
        exchange = Exchange(request, params, request_id, unit, route, signed_id="", answered_by=route.model_version)
        exchange.signed_id = sign_id(exchange.interaction_id, self._settings.security.signing_key)
        return exchange

    async def complete(self, exchange: Exchange) -> Generation:
        """Serve the exchange and log its event before returning; start its shadow copy.

        An A/B challenger that fails, hangs past ``gateway.challenger_timeout_s`` or answers
        garbage is replaced by the champion: the user sees no error.
        """
        champion = exchange.generation_request(exchange.route.state.champion, "served")
        self._check(champion)
        self._start_shadow(exchange)
        if exchange.route.arm == "challenger":
            answer = await self._try_challenger(exchange)
            if answer is not None:
                self._screen(exchange, answer)
                self._record_served(exchange, answer, None)
                return answer
        try:
            generation = await self._generate(exchange, champion)
        except ApiError as exc:
            if exc.status >= 500:
                self._record_served(exchange, None, exc.detail or exc.message)
            raise
        self._screen(exchange, generation)
        self._record_served(exchange, generation, None)
        return generation

    def _screen(self, exchange: Exchange, generation: Generation) -> None:
        """Mark the exchange when the content filter blocks its answer (counted and audited by the guard)."""
        if self.guard.check_answer(generation.text, exchange.unit, exchange.interaction_id) is not None:
            exchange.shown = self.guard.refusal

    async def stream(self, exchange: Exchange) -> tuple[str, AsyncIterator[StreamItem]]:
        """Serve the exchange as text pieces, then its generation; the first piece has arrived on return.

        Errors before the first piece (prompt too long, overload) raise here, before any byte is
        sent; an A/B challenger failing before its first piece is replaced by the champion. A
        failure after the first piece ends the stream with a :class:`StreamFailure`.
        """
        champion = exchange.generation_request(exchange.route.state.champion, "served")
        self._check(champion)
        self._start_shadow(exchange)
        if exchange.route.arm == "challenger":
            opened = await self._open_challenger_stream(exchange)
            if opened is not None:
                return exchange.signed_id, self._pieces(exchange, *opened)
        try:
            running = start_stream(self.pool.backend_for(champion.model_version), champion)
            first = await first_piece(running, None)
        except Exception as exc:
            error = self._as_api_error(exchange, exc)
            if error.status >= 500:
                self._record_served(exchange, None, error.detail or error.message)
            raise error from exc
        exchange.ttft_ms = (time.perf_counter() - exchange.started) * 1000
        return exchange.signed_id, self._pieces(exchange, running, first, None)

    async def _try_challenger(self, exchange: Exchange) -> Generation | None:
        """The challenger's answer, or None after recording why the champion must answer instead.

        The timeout is on silence, not on the whole answer: a challenger still producing text is
        never abandoned, one that produces nothing for ``gateway.challenger_timeout_s`` is.
        """
        version, timeout = exchange.route.model_version, self._settings.gateway.challenger_timeout_s
        if (skipped := self.breaker.skip(version)) is not None:
            self._fall_back(exchange, "breaker", skipped)
            return None
        try:
            request = exchange.generation_request(version, "served")
            backend = self.pool.backend_for(version)
            backend.check(request)
            running = start_stream(backend, request)
            while await first_piece(running, timeout) is not None:
                pass
            generation = running.task.result()
        except TimeoutError:
            self._fall_back(exchange, "timeout", silent(timeout))
            return None
        except Exception as exc:  # the challenger's failure is data, never the user's problem
            self._fall_back(exchange, "error", f"{type(exc).__name__}: {exc}")
            return None
        problem = invalid_answer(generation)
        if problem is not None:
            self._fall_back(exchange, "invalid", problem)
            return None
        self.breaker.record(version, ok=True)
        return generation

    async def _open_challenger_stream(self, exchange: Exchange) -> tuple[RunningStream, str | None, float] | None:
        """The challenger's stream with its first piece, or None after recording a fallback."""
        version, timeout = exchange.route.model_version, self._settings.gateway.challenger_timeout_s
        if (skipped := self.breaker.skip(version)) is not None:
            self._fall_back(exchange, "breaker", skipped)
            return None
        running: RunningStream | None = None
        try:
            request = exchange.generation_request(version, "served")
            self.pool.backend_for(version).check(request)
            running = start_stream(self.pool.backend_for(version), request)
            first = await first_piece(running, timeout)
            problem = invalid_answer(running.task.result()) if first is None else None
        except TimeoutError:
            problem, reason = silent(timeout), "timeout"
        except Exception as exc:  # before the first byte the champion can still answer
            problem, reason = f"{type(exc).__name__}: {exc}", "error"
        else:
            if problem is None:
                self.breaker.record(version, ok=True)
                exchange.ttft_ms = (time.perf_counter() - exchange.started) * 1000
                return running, first, timeout
            reason = "invalid"
        if running is not None:
            running.task.cancel()
        self._fall_back(exchange, reason, problem)
        return None

    def _fall_back(self, exchange: Exchange, reason: str, problem: str) -> None:
        version = exchange.route.model_version
        exchange.answered_by = exchange.route.state.champion
        exchange.fallback = fallback_error(version, problem)
        self._metrics.fallbacks.labels(reason=reason).inc()
        if reason != "breaker":  # skips are not news; the failures that opened the breaker were logged
            self.breaker.record(version, ok=False)
            log.warning(
                "challenger %s failed on request %s (%s); the champion answers", version, exchange.request_id, problem
            )

    async def _pieces(
        self, exchange: Exchange, running: RunningStream, first: str | None, timeout: float | None
    ) -> AsyncIterator[StreamItem]:
        sent: list[str] = []
        check = self.guard.stream_check()
        verdict = CLEAN
        generation: Generation | None = None
        try:
            piece = first
            while piece is not None:
                out, verdict = check.feed(piece) if check is not None else (piece, CLEAN)
                if verdict.blocked:
                    running.task.cancel()
                    break
                if out:
                    sent.append(out)
                    yield out
                piece = await next_piece(running, timeout)
            else:
                generation = running.task.result()
                answered_by_challenger = exchange.route.arm == "challenger" and exchange.fallback is None
                problem = invalid_answer(generation) if answered_by_challenger else None
                if problem is not None:
                    raise ValueError(problem)
                rest, verdict = check.finish() if check is not None else ("", CLEAN)
                if rest:
                    sent.append(rest)
                    yield rest
        except (asyncio.CancelledError, GeneratorExit):
            running.task.cancel()
            self._record_served(exchange, None, DISCONNECTED, "".join(sent))
            raise
        except Exception as exc:  # the first chunk went out: end the stream with an error chunk
            running.task.cancel()
            if isinstance(exc, TimeoutError) and timeout is not None:
                detail = silent(timeout)
            else:
                detail = f"{type(exc).__name__}: {exc}"
            log.warning("stream of request %s failed after its first chunk: %s", exchange.request_id, detail)
            self._record_served(exchange, None, detail, "".join(sent))
            self._metrics.stream_failures.labels(arm=exchange.route.arm).inc()
            if exchange.answered_by != exchange.route.state.champion:
                self.breaker.record(exchange.answered_by, ok=False)
            yield StreamFailure(STREAM_FAILED)
            return
        if verdict.blocked:
            yield self._stop_blocked(exchange, verdict, sent, generation)
            return
        assert generation is not None  # the loop ended without a block, so the generation finished
        self._record_served(exchange, generation, None)
        yield generation

    def _stop_blocked(
        self, exchange: Exchange, verdict: ContentVerdict, sent: list[str], generation: Generation | None
    ) -> ContentStopped:
        """Count, audit and record a stream the content filter stopped; the user saw ``sent``."""
        self.guard.record_block("answer", verdict, exchange.unit, f"interaction:{exchange.interaction_id}")
        exchange.shown = "".join(sent)
        self._record_served(exchange, generation, None)
        return ContentStopped(verdict.category)

    def _check(self, request: GenerationRequest) -> None:
        try:
            self.pool.backend_for(request.model_version).check(request)
        except ContextLengthError as exc:
            raise invalid_request(str(exc), "max_tokens") from exc
        except LookupError as exc:
            raise ApiError(503, BACKEND_FAILED, kind="server_error", detail=str(exc)) from exc

    async def _generate(self, exchange: Exchange, request: GenerationRequest) -> Generation:
        try:
            return await self.pool.backend_for(request.model_version).generate(request)
        except Exception as exc:
            raise self._as_api_error(exchange, exc) from exc

    def _as_api_error(self, exchange: Exchange, exc: Exception) -> ApiError:
        """What the user gets for a failure of the served answer; called while handling ``exc``."""
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, ContextLengthError):
            return invalid_request(str(exc), "max_tokens")
        if isinstance(exc, Overloaded):
            return overloaded(self._settings.gateway.retry_after_s)
        # any other backend failure is recorded by the caller, then answered with a 503
        log.exception("backend failed for request %s", exchange.request_id)
        return ApiError(503, BACKEND_FAILED, kind="server_error", detail=f"{type(exc).__name__}: {exc}")

    def _start_shadow(self, exchange: Exchange) -> None:
        version = exchange.route.shadow_version
        if version is None:
            return
        try:
            backend = self.pool.backend_for(version)
        except LookupError as exc:
            self._record(exchange, "challenger", "shadow", version, None, str(exc))
            return
        self.shadow.submit(
            backend,
            exchange.generation_request(version, "shadow"),
            lambda generation, error: self._record_shadow(exchange, version, generation, error),
        )

    def _record_shadow(
        self, exchange: Exchange, version: str, generation: Generation | None, error: str | None
    ) -> None:
        """The shadow event, with the refusal a user would have got when the filter blocks its answer."""
        blocked = generation is not None and self.guard.shadow_blocked(generation.text)
        shown = self.guard.refusal if blocked else None
        self._record(exchange, "challenger", "shadow", version, generation, error, shown=shown)

    def _sampling_params(self, request: ChatCompletionRequest) -> SamplingParams:
        served = self._settings.gateway.served_model_name
        if request.model != served:
            raise ApiError(
                404,
                f"model {request.model!r} is not served here; use {served!r}",
                kind="not_found_error",
                param="model",
            )
        most = self._settings.gateway.max_messages
        if len(request.messages) > most:
            raise invalid_request(f"messages: at most {most} messages per request (gateway.max_messages)", "messages")
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
        exchange.served_error = error
        if exchange.fallback is not None:
            error = exchange.fallback if error is None else f"{exchange.fallback}; then {error}"
        self._record(
            exchange, exchange.route.arm, "served", exchange.answered_by, generation, error, partial, exchange.shown
        )

    def _record(
        self,
        exchange: Exchange,
        arm: Arm,
        role: Role,
        model_version: str,
        generation: Generation | None,
        error: str | None,
        partial: str = "",
        shown: str | None = None,
    ) -> None:
        """Log one response event; ``shown`` replaces the completion when the content filter blocked it."""
        latency_s = time.perf_counter() - exchange.started
        request = exchange.request
        completion = generation.text if generation else partial
        finish_reason: FinishReason = generation.finish_reason if generation else "error"
        confidence = generation.confidence if generation else None
        if shown is not None:
            completion, finish_reason, confidence = shown, "content_filter", None
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
            completion=completion,
            prompt_tokens=generation.prompt_tokens if generation else 0,
            completion_tokens=generation.completion_tokens if generation else 0,
            latency_ms=latency_s * 1000,
            ttft_ms=exchange.ttft_ms if role == "served" else None,
            finish_reason=finish_reason,
            confidence=confidence,
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
