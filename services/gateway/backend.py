"""Inference backends behind one small protocol, and the transformers one.

A backend serves one base model and every adapter version on it. A model version is the base
model's name, or ``<base>+<adapter version>`` for a LoRA adapter from the registry
(:mod:`feedback.registry`). The transformers backend renders and checks each prompt, then hands
it to the batching scheduler (:mod:`services.gateway.scheduler`), which feeds concurrent requests,
served and shadow, any mix of adapters, into one running batch that they join and leave between
decoding steps (:class:`feedback.model.batch.ContinuousBatch`).
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from feedback.deployments import split_version
from feedback.errors import ModelError
from feedback.events import ChatMessage, Role
from feedback.model.adapters import AdapterSet
from feedback.model.batch import BASE_ADAPTER, BatchRow, ContinuousBatch, TextCallback
from feedback.model.runtime import Generation, ModelRuntime, SamplingParams, render_chat
from feedback.registry import AdapterRegistry
from feedback.settings import GatewaySettings
from services.gateway.metrics import GatewayMetrics
from services.gateway.scheduler import BatchScheduler


class ContextLengthError(ValueError):
    """The prompt plus the completion budget does not fit the model's context."""


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to make: for the served answer or a shadow copy."""

    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    model_version: str
    role: Role = "served"
    on_text: TextCallback | None = None  # called with each new piece of text, from any thread


def render_prompt(tokenizer: PreTrainedTokenizerBase, request: GenerationRequest, context_length: int) -> list[int]:
    """The request's messages as prompt token ids (the chat template); ContextLengthError when the
    prompt plus ``max_tokens`` does not fit ``context_length``."""
    prompt = render_chat(tokenizer, [m.model_dump() for m in request.messages])
    budget = request.params.max_tokens
    if len(prompt) + budget > context_length:
        raise ContextLengthError(
            f"the prompt ({len(prompt)} tokens) plus max_tokens ({budget}) exceeds the model's "
            f"context length of {context_length} tokens"
        )
    return prompt


class InferenceBackend(Protocol):
    """Generates completions for the model versions on one base model."""

    async def start(self, metrics: GatewayMetrics) -> None: ...

    async def close(self) -> None: ...

    def serves(self, model_version: str) -> bool: ...

    async def load(self, model_version: str) -> None: ...

    def check(self, request: GenerationRequest) -> None: ...

    async def generate(self, request: GenerationRequest) -> Generation: ...


class TransformersBackend:
    """A transformers runtime with LoRA adapters and continuous batching."""

    def __init__(
        self,
        runtime: ModelRuntime,
        settings: GatewaySettings | None = None,
        registry: AdapterRegistry | None = None,
    ) -> None:
        self._runtime = runtime
        self._settings = settings or GatewaySettings()
        self._registry = registry
        self._adapters = AdapterSet(runtime)
        # A tokenizer of our own: fast tokenizers refuse concurrent use from two threads.
        self._tokenizer = copy.deepcopy(runtime.tokenizer)
        self._scheduler: BatchScheduler | None = None

    @property
    def scheduler(self) -> BatchScheduler:
        """The running batch scheduler."""
        if self._scheduler is None:
            raise RuntimeError("the backend is not started")
        return self._scheduler

    async def start(self, metrics: GatewayMetrics) -> None:
        """Start batching on the running event loop."""
        engine = ContinuousBatch(self._runtime, lambda: self._adapters.model)
        self._scheduler = BatchScheduler(engine, self._settings, metrics)
        self._scheduler.start()

    async def close(self) -> None:
        """Stop batching; waiting requests fail."""
        if self._scheduler is not None:
            await self._scheduler.close()
            self._scheduler = None

    @property
    def base(self) -> str:
        """The base model's name."""
        return self._runtime.name

    def serves(self, model_version: str) -> bool:
        """Whether ``model_version`` runs on this backend's base model."""
        return split_version(model_version)[0] == self.base

    async def load(self, model_version: str) -> None:
        """Fetch (hash verified) and load the version's adapter, while serving; a no-op for the base."""
        adapter = split_version(model_version)[1]
        if adapter is not None and adapter not in self._adapters:
            if self._registry is None:
                raise ModelError(f"no adapter registry to load {model_version!r} from")
            path = await asyncio.to_thread(self._registry.fetch, adapter)
            await asyncio.to_thread(self._adapters.load, adapter, path)

    def check(self, request: GenerationRequest) -> None:
        """Raise ContextLengthError when the prompt plus max_tokens does not fit the context."""
        self._prompt(request)

    def _prompt(self, request: GenerationRequest) -> list[int]:
        return render_prompt(self._tokenizer, request, self._runtime.context_length)

    async def generate(self, request: GenerationRequest) -> Generation:
        """Check the prompt against the context, then generate in a shared batch."""
        prompt = self._prompt(request)
        adapter = split_version(request.model_version)[1]
        if adapter is not None:
            await self.load(request.model_version)
        row = BatchRow(prompt, request.params, adapter=adapter or BASE_ADAPTER, on_text=request.on_text)
        return await self.scheduler.submit(row, request.role)
