"""``/v1/chat/completions`` (JSON or server-sent events) and ``/v1/models``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse

from feedback.events import Arm
from feedback.model.runtime import Generation
from services.gateway.auth import require_admin
from services.gateway.deps import ChatDep, SettingsDep
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

router = APIRouter(prefix="/v1", tags=["chat"])

INTERACTION_HEADER = "X-Interaction-Id"
ARM_HEADER = "X-Flywheel-Arm"  # forces an arm; admins only


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    response: Response,
    chat: ChatDep,
    settings: SettingsDep,
    arm: Annotated[Arm | None, Header(alias=ARM_HEADER)] = None,
) -> ChatCompletionResponse | StreamingResponse:
    """Answer with the routed arm; the signed interaction id is in the body (or every chunk) and a header."""
    if arm is not None:
        require_admin(request.headers.get("authorization"), settings)
    exchange = chat.open(body, request.headers, arm)
    headers = {INTERACTION_HEADER: exchange.signed_id}
    if body.stream:
        _, pieces = await chat.stream(exchange)
        return StreamingResponse(_sse(exchange, pieces), media_type="text/event-stream", headers=headers)
    generation = await chat.complete(exchange)
    response.headers.update(headers)
    return _response(exchange, generation)


def _response(exchange: Exchange, generation: Generation) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id=f"chatcmpl-{exchange.interaction_id}",
        created=int(time.time()),
        model=exchange.request.model,
        choices=[Choice(message=AssistantMessage(content=generation.text), finish_reason=generation.finish_reason)],
        usage=Usage(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            total_tokens=generation.prompt_tokens + generation.completion_tokens,
        ),
        interaction_id=exchange.signed_id,
    )


async def _sse(exchange: Exchange, pieces: AsyncIterator[str | Generation]) -> AsyncIterator[str]:
    """Role chunk, one chunk per piece of text, the final chunk with finish_reason, then [DONE]."""
    created = int(time.time())

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
        body = ChatCompletionChunk(
            id=f"chatcmpl-{exchange.interaction_id}",
            created=created,
            model=exchange.request.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],
            interaction_id=exchange.signed_id,
        )
        return f"data: {body.model_dump_json()}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for piece in pieces:
        if isinstance(piece, str):
            yield chunk({"content": piece})
        else:
            yield chunk({}, piece.finish_reason)
    yield "data: [DONE]\n\n"


@router.get("/models")
async def list_models(settings: SettingsDep) -> ModelList:
    """The one model name this gateway serves."""
    return ModelList(data=[ModelCard(id=settings.gateway.served_model_name, created=int(time.time()))])
