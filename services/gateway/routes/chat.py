"""``/v1/chat/completions`` (JSON or server-sent events) and ``/v1/models``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from feedback.access import Permission
from feedback.audit import note_of
from feedback.events import Arm
from feedback.model.runtime import Generation
from services.gateway.audit import describe_exchange
from services.gateway.auth import ChatUser, check
from services.gateway.deps import ChatDep, SettingsDep, admit
from services.gateway.errors import error_body, invalid_request
from services.gateway.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    ModelCard,
    ModelList,
    Usage,
)
from services.gateway.serving import Exchange
from services.gateway.streaming import ContentStopped, StreamFailure, StreamItem

router = APIRouter(prefix="/v1", tags=["chat"])

INTERACTION_HEADER = "X-Interaction-Id"
ARM_HEADER = "X-Flywheel-Arm"  # forces an arm; admins and developers only (force-arm)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    response: Response,
    who: ChatUser,
    chat: ChatDep,
    arm: Annotated[Arm | None, Header(alias=ARM_HEADER)] = None,
) -> ChatCompletionResponse | StreamingResponse:
    """Answer with the routed arm; the signed interaction id is in the body (or every chunk) and a header."""
    if arm is not None:
        check(who, Permission.FORCE_ARM)
    if body.stream_options is not None and not body.stream:
        raise invalid_request("stream_options: only allowed when stream is true", "stream_options")
    release = admit(request, who)  # the key's rate and requests in flight (429 with Retry-After)
    streaming = False
    try:
        exchange = chat.open(body, request.headers, arm)
        describe_exchange(note_of(request), exchange)
        headers = {INTERACTION_HEADER: exchange.signed_id}
        if body.stream:
            _, pieces = await chat.stream(exchange)
            streaming = True  # in flight until the stream ended, or its client left (the release runs once)
            return StreamingResponse(
                _sse(exchange, pieces, release),
                media_type="text/event-stream",
                headers=headers,
                background=BackgroundTask(release),
            )
        generation = await chat.complete(exchange)
        response.headers.update(headers)
        return _response(exchange, generation)
    finally:
        if not streaming:
            release()


def _response(exchange: Exchange, generation: Generation) -> ChatCompletionResponse:
    """The answer; one the content filter blocked is its refusal with ``finish_reason: "content_filter"``."""
    if exchange.shown is not None:
        choice = Choice(message=AssistantMessage(content=exchange.shown), finish_reason="content_filter")
    else:
        choice = Choice(message=AssistantMessage(content=generation.text), finish_reason=generation.finish_reason)
    return ChatCompletionResponse(
        id=f"chatcmpl-{exchange.interaction_id}",
        created=int(time.time()),
        model=exchange.request.model,
        choices=[choice],
        usage=_usage(generation),
        interaction_id=exchange.signed_id,
    )


async def _sse(
    exchange: Exchange, pieces: AsyncIterator[StreamItem], release: Callable[[], None]
) -> AsyncIterator[str]:
    """Role chunk, one chunk per piece of text, the final chunk with finish_reason, then [DONE].

    With ``stream_options.include_usage`` every chunk has ``usage: null`` and a last chunk with no
    choices carries the usage, as OpenAI sends it. A failure after the first chunk ends the stream
    with an OpenAI error event (the official client raises it) and [DONE]. A stream the content
    filter stopped ends with a chunk whose ``finish_reason`` is ``"content_filter"`` (no usage chunk:
    its generation was cut short) and [DONE].
    """
    created = int(time.time())
    include_usage = exchange.request.include_usage

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(
            id=f"chatcmpl-{exchange.interaction_id}",
            created=created,
            model=exchange.request.model,
            choices=choices,
            usage=usage,
            interaction_id=exchange.signed_id,
        )
        return f"data: {body.model_dump_json(exclude=None if include_usage else {'usage'})}\n\n"

    try:
        yield chunk([ChunkChoice(delta={"role": "assistant", "content": ""})])
        async for piece in pieces:
            if isinstance(piece, str):
                yield chunk([ChunkChoice(delta={"content": piece})])
            elif isinstance(piece, StreamFailure):
                yield f"data: {json.dumps(error_body(piece.message, 'server_error', None))}\n\n"
            elif isinstance(piece, ContentStopped):
                yield chunk([ChunkChoice(delta={}, finish_reason="content_filter")])
            else:
                yield chunk([ChunkChoice(delta={}, finish_reason=piece.finish_reason)])
                if include_usage:
                    yield chunk([], _usage(piece))
        yield "data: [DONE]\n\n"
    finally:
        release()


def _usage(generation: Generation) -> Usage:
    return Usage(
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        total_tokens=generation.prompt_tokens + generation.completion_tokens,
    )


@router.get("/models")
async def list_models(_: ChatUser, settings: SettingsDep) -> ModelList:
    """The one model name this gateway serves."""
    return ModelList(data=[ModelCard(id=settings.gateway.served_model_name, created=int(time.time()))])
