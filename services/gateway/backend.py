"""Inference backends behind one small protocol.

The transformers backend runs the model in a worker thread so the event loop stays free; the
model runtime serializes calls itself. Other backends (vLLM on GPUs) implement the same protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from feedback.events import ChatMessage
from feedback.model.runtime import Generation, ModelRuntime, SamplingParams


class InferenceBackend(Protocol):
    """Answers chat prompts with one model version."""

    @property
    def model_version(self) -> str: ...

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Generation: ...


class TransformersBackend:
    """A model runtime (transformers, CPU or GPU) as an inference backend."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self._runtime = runtime

    @property
    def model_version(self) -> str:
        """The base model's name; adapters extend it once the registry exists."""
        return self._runtime.name

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Generation:
        """Generate in a worker thread."""
        prompt = [{"role": m.role, "content": m.content} for m in messages]
        return await asyncio.to_thread(self._runtime.generate, prompt, params)
