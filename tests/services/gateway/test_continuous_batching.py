"""Continuous batching through the transformers backend on the real default model.

A request that arrives while a long one generates joins its batch at the next step and is
answered as soon as it is done, long before the long one ends.
"""

from __future__ import annotations

import asyncio

from feedback.events import ChatMessage
from feedback.model.runtime import Generation, ModelRuntime, SamplingParams
from feedback.settings import GatewaySettings
from services.gateway.backend import GenerationRequest, TransformersBackend
from services.gateway.metrics import GatewayMetrics

BASE = "smollm2-135m-instruct"
FRANCE = (ChatMessage(role="user", content="What is the capital of France?"),)
STORY = (ChatMessage(role="user", content="Write a long story about a dragon who learns to cook."),)


def test_a_short_request_joins_a_running_batch_and_is_answered_first(runtime: ModelRuntime) -> None:
    long_params = SamplingParams(max_tokens=40, temperature=0.0)
    short_params = SamplingParams(max_tokens=6, temperature=0.0)
    metrics = GatewayMetrics()

    async def main() -> tuple[list[str], int, Generation, Generation, Generation]:
        backend = TransformersBackend(runtime, GatewaySettings(batch_wait_ms=0))
        await backend.start(metrics)
        try:
            short_alone = await backend.generate(GenerationRequest(FRANCE, short_params, BASE))
            pieces: list[str] = []
            order: list[str] = []
            started = asyncio.Event()

            loop = asyncio.get_running_loop()

            def on_text(piece: str) -> None:  # called from the step thread
                pieces.append(piece)
                loop.call_soon_threadsafe(started.set)

            async def ask(name: str, request: GenerationRequest) -> Generation:
                generation = await backend.generate(request)
                order.append(name)
                return generation

            long = asyncio.ensure_future(ask("long", GenerationRequest(STORY, long_params, BASE, on_text=on_text)))
            await started.wait()  # the long request is generating
            short = await ask("short", GenerationRequest(FRANCE, short_params, BASE))
            pieces_when_short_done = len(pieces)
            return order, pieces_when_short_done, short, short_alone, await long
        finally:
            await backend.close()

    order, pieces_then, short, short_alone, long = asyncio.run(main())
    assert order == ["short", "long"]
    assert long.completion_tokens == 40
    assert 0 < pieces_then < 34  # the long one had most of its tokens still to make
    assert short.token_ids == short_alone.token_ids
    # Every step observes the batch size: the short request shared exactly its own steps.
    assert batch_steps(metrics, 2) - batch_steps(metrics, 1) == short.completion_tokens


def batch_steps(metrics: GatewayMetrics, at_most: int) -> float:
    """Steps that ran with at most ``at_most`` rows (the batch-size histogram's bucket)."""
    for line in metrics.render().decode().splitlines():
        if line.startswith(f'flywheel_batch_size_bucket{{le="{float(at_most)}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no batch-size bucket for {at_most}")
