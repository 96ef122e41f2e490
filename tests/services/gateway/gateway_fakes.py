"""In-memory stand-ins for pure unit tests of the gateway (the real model runs in tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Literal

from feedback.deployments import split_version
from feedback.model.runtime import Generation
from services.gateway.backend import ContextLengthError, GenerationRequest
from services.gateway.metrics import GatewayMetrics
from services.gateway.scheduler import Overloaded

# stall: one piece of text, then hang; break: one piece, then crash; overloaded: the scheduler's queue is full
Behaviour = Literal["ok", "crash", "hang", "garbage", "stall", "break", "overloaded"]


class FakeBackend:
    """Answers with a fixed text streamed in pieces, or crashes, hangs, or returns garbage when told to."""

    def __init__(self, base: str = "fake-model@1", text: str = "Paris.", behaviour: Behaviour = "ok") -> None:
        self.base = base
        self.text = text
        self.pieces: tuple[str, ...] = ("Par", "is.")  # what a stream sends, piece by piece
        self.behaviour: Behaviour = behaviour
        self.fail = False  # the served path's failure switch
        self.context_length = 100
        self.calls: list[GenerationRequest] = []
        self.loaded: list[str] = []
        self.started = self.closed = False

    async def start(self, metrics: GatewayMetrics) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def serves(self, model_version: str) -> bool:
        return split_version(model_version)[0] == self.base

    async def load(self, model_version: str) -> None:
        _check_adapter(model_version)
        self.loaded.append(model_version)

    def check(self, request: GenerationRequest) -> None:
        prompt = sum(len(m.content.split()) for m in request.messages)
        if prompt + request.params.max_tokens > self.context_length:
            raise ContextLengthError(
                f"prompt {prompt} + max_tokens {request.params.max_tokens} > {self.context_length}"
            )

    async def generate(self, request: GenerationRequest) -> Generation:
        self.calls.append(request)
        _check_adapter(request.model_version)  # a version that failed to load fails again here, as for real
        if self.behaviour == "overloaded":
            raise Overloaded
        if self.fail or self.behaviour == "crash":
            raise RuntimeError("device lost")
        if self.behaviour == "hang":
            await asyncio.Event().wait()
        if self.behaviour == "garbage":
            return Generation(
                text="\x00" * 3,
                prompt_tokens=-5,
                completion_tokens=1,
                finish_reason="stop",
                confidence=7.0,
                token_logprobs=(),
            )
        if self.behaviour in ("stall", "break") and request.on_text is not None:
            request.on_text("Par")
            await asyncio.sleep(0.05)  # the piece goes out before the failure
            if self.behaviour == "break":
                raise RuntimeError("device lost mid-stream")
            await asyncio.Event().wait()
        if request.on_text is not None:
            for piece in self.pieces:
                request.on_text(piece)
                await asyncio.sleep(0)
        return Generation(
            text=self.text,
            prompt_tokens=7,
            completion_tokens=3,
            finish_reason="stop",
            confidence=0.5,
            token_logprobs=(),
        )


def _check_adapter(model_version: str) -> None:
    if model_version.endswith("+missing"):
        raise LookupError(f"adapter version {model_version!r} is not in the registry")
