"""``/v1/chat/completions`` and ``/v1/models``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from services.gateway.deps import ChatDep, SettingsDep
from services.gateway.protocol import ChatCompletionRequest, ChatCompletionResponse, ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["chat"])

INTERACTION_HEADER = "X-Interaction-Id"


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, response: Response, chat: ChatDep
) -> ChatCompletionResponse:
    """Answer with the champion; the signed interaction id is in the body and a header."""
    result = await chat.complete(body, request.headers)
    response.headers[INTERACTION_HEADER] = result.interaction_id
    return result


@router.get("/models")
async def list_models(settings: SettingsDep) -> ModelList:
    """The one model name this gateway serves."""
    return ModelList(data=[ModelCard(id=settings.gateway.served_model_name, created=int(time.time()))])
