"""Answering chat requests and taking feedback, independent of HTTP.

Every answer is recorded as an interaction event in the write-ahead log before the response
returns; feedback is accepted only for interaction ids this service signed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from feedback.errors import SignatureError, WalFullError
from feedback.events import FeedbackEvent, InteractionEvent
from feedback.ids import new_id
from feedback.model.runtime import Generation, SamplingParams
from feedback.producer import EventProducer
from feedback.settings import Settings
from feedback.signing import sign_id, verify_id
from services.gateway.backend import InferenceBackend
from services.gateway.errors import (
    BACKEND_FAILED,
    EVENT_LOG_FULL,
    INVALID_SIGNATURE,
    STREAMING_UNSUPPORTED,
    ApiError,
    invalid_request,
)
from services.gateway.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    FeedbackAccepted,
    FeedbackRequest,
    Usage,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128  # completion budget when a request names none


@dataclass(frozen=True)
class Deployment:
    """What serves traffic now; until challengers exist, the champion alone."""

    deployment_id: str = "initial"
    phase: str = "champion-only"


def assignment_unit(request: ChatCompletionRequest, headers: Mapping[str, str], request_id: str) -> str:
    """The unit of assignment: ``user``, else X-User-Id, else X-Session-Id, else the request id."""
    return request.user or headers.get("x-user-id") or headers.get("x-session-id") or request_id


class ChatService:
    """Serves chat completions with the champion and records every answer."""

    def __init__(self, backend: InferenceBackend, producer: EventProducer, settings: Settings) -> None:
        self._backend = backend
        self._producer = producer
        self._settings = settings
        self.deployment = Deployment()

    @property
    def model_version(self) -> str:
        """The champion's model version."""
        return self._backend.model_version

    async def complete(self, request: ChatCompletionRequest, headers: Mapping[str, str]) -> ChatCompletionResponse:
        """Answer one request with the champion; the interaction is logged before this returns."""
        params = self._sampling_params(request)
        request_id = headers.get("x-request-id") or new_id()
        interaction_id = new_id()
        started = time.perf_counter()
        try:
            generation = await self._backend.generate(request.messages, params)
        except Exception as exc:  # any backend failure is recorded, then answered with a 503
            log.exception("backend failed for request %s", request_id)
            self._record(request, headers, request_id, interaction_id, started, None, f"{type(exc).__name__}: {exc}")
            raise ApiError(503, BACKEND_FAILED, kind="server_error") from exc
        self._record(request, headers, request_id, interaction_id, started, generation, None)
        signed = sign_id(interaction_id, self._settings.security.signing_key)
        return ChatCompletionResponse(
            id=f"chatcmpl-{interaction_id}",
            created=int(time.time()),
            model=request.model,
            choices=[
                Choice(
                    message=AssistantMessage(content=generation.text),
                    finish_reason=generation.finish_reason,
                )
            ],
            usage=Usage(
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                total_tokens=generation.prompt_tokens + generation.completion_tokens,
            ),
            interaction_id=signed,
        )

    def _sampling_params(self, request: ChatCompletionRequest) -> SamplingParams:
        if request.stream:
            raise invalid_request(STREAMING_UNSUPPORTED, "stream")
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

    def _record(
        self,
        request: ChatCompletionRequest,
        headers: Mapping[str, str],
        request_id: str,
        interaction_id: str,
        started: float,
        generation: Generation | None,
        error: str | None,
    ) -> None:
        event = InteractionEvent(
            interaction_id=interaction_id,
            request_id=request_id,
            unit_id=assignment_unit(request, headers, request_id),
            arm="champion",
            role="served",
            model_version=self._backend.model_version,
            deployment_id=self.deployment.deployment_id,
            phase=self.deployment.phase,
            messages=tuple(request.messages),
            completion=generation.text if generation else "",
            prompt_tokens=generation.prompt_tokens if generation else 0,
            completion_tokens=generation.completion_tokens if generation else 0,
            latency_ms=(time.perf_counter() - started) * 1000,
            finish_reason=generation.finish_reason if generation else "error",
            confidence=generation.confidence if generation else None,
            error=error,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.token_budget(),
            seed=request.seed,
        )
        publish(self._producer, self._settings.kafka.topics.interactions, event)


def publish(producer: EventProducer, topic: str, event: InteractionEvent | FeedbackEvent) -> None:
    """Log an event durably, or answer 503 when the log is full."""
    try:
        producer.publish(topic, event)
    except WalFullError as exc:
        log.error("event log full: %s", exc)
        raise ApiError(503, EVENT_LOG_FULL, kind="server_error") from exc


class FeedbackService:
    """Accepts feedback for interactions this service signed."""

    def __init__(self, producer: EventProducer, settings: Settings) -> None:
        self._producer = producer
        self._settings = settings

    def submit(self, request: FeedbackRequest, headers: Mapping[str, str]) -> FeedbackAccepted:
        """Verify the interaction id's signature and log the feedback event."""
        try:
            raw_id = verify_id(request.interaction_id, self._settings.security.signing_key)
        except SignatureError as exc:
            raise ApiError(403, INVALID_SIGNATURE, kind="permission_error", param="interaction_id") from exc
        try:
            event = FeedbackEvent(
                feedback_id=request.feedback_id,
                interaction_id=raw_id,
                user_id=request.user or headers.get("x-user-id"),
                thumb=request.thumb,
                rating=request.rating,
                comment=request.comment,
                correction=request.correction,
            )
        except ValueError as exc:
            raise invalid_request("feedback needs a thumb, a rating, a comment or a correction") from exc
        publish(self._producer, self._settings.kafka.topics.feedback, event)
        return FeedbackAccepted(feedback_id=request.feedback_id)
