"""The contract every inference backend passes (the transformers one now; vLLM runs the same suite).

Each case runs on a started backend in a fresh event loop. Numbers are checked against a
teacher-forced pass of the reference runtime, so every backend must compute the same confidence
for the same tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from feedback.events import ChatMessage
from feedback.model.runtime import ModelRuntime, SamplingParams
from feedback.settings import GatewaySettings
from services.gateway.backend import ContextLengthError, GenerationRequest, InferenceBackend, TransformersBackend
from services.gateway.metrics import GatewayMetrics

T = TypeVar("T")
BASE = "smollm2-135m-instruct"
FRANCE = (ChatMessage(role="user", content="What is the capital of France?"),)
STORY = (ChatMessage(role="user", content="Write a long story about a dragon who learns to cook."),)
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)

BackendFactory = Callable[[ModelRuntime], InferenceBackend]
FACTORIES: dict[str, BackendFactory] = {
    "transformers": lambda runtime: TransformersBackend(runtime, GatewaySettings(batch_wait_ms=20)),
}


@pytest.fixture(params=sorted(FACTORIES))
def run(
    request: pytest.FixtureRequest, runtime: ModelRuntime
) -> Callable[[Callable[[InferenceBackend], Awaitable[T]]], T]:
    factory = FACTORIES[request.param]

    def runner(body: Callable[[InferenceBackend], Awaitable[T]]) -> T:
        async def main() -> T:
            backend = factory(runtime)
            await backend.start(GatewayMetrics())
            try:
                return await body(backend)
            finally:
                await backend.close()

        return asyncio.run(main())

    return runner


def ask(messages: tuple[ChatMessage, ...], params: SamplingParams = GREEDY, **kw: object) -> GenerationRequest:
    return GenerationRequest(messages, params, BASE, **kw)  # type: ignore[arg-type]


def test_confidence_is_the_reference_number_for_the_same_tokens(run: Callable, runtime: ModelRuntime) -> None:  # type: ignore[type-arg]
    got = run(lambda b: b.generate(ask(FRANCE)))
    scored = runtime.score_tokens(runtime.render_prompt([m.model_dump() for m in FRANCE]), got.token_ids)
    assert max(abs(a - b) for a, b in zip(got.token_logprobs, scored, strict=True)) < 1e-3
    assert got.completion_tokens == len(got.token_ids) == len(got.token_logprobs)
    assert "Paris" in got.text


def test_budget_stop_and_streaming(run: Callable) -> None:  # type: ignore[type-arg]
    pieces: list[str] = []

    async def body(backend: InferenceBackend) -> tuple[object, object]:
        short = await backend.generate(ask(STORY, SamplingParams(max_tokens=3, temperature=0.0)))
        stopped = await backend.generate(
            ask(FRANCE, SamplingParams(max_tokens=12, temperature=0.0, stop=("France",)), on_text=pieces.append)
        )
        return short, stopped

    short, stopped = run(body)
    assert (short.completion_tokens, short.finish_reason) == (3, "length")  # type: ignore[attr-defined]
    assert (stopped.text, stopped.finish_reason) == ("The capital of ", "stop")  # type: ignore[attr-defined]
    assert "".join(pieces) == "The capital of "


def test_concurrent_requests_get_the_answers_they_get_alone(run: Callable) -> None:  # type: ignore[type-arg]
    async def body(backend: InferenceBackend) -> tuple[list[object], list[object]]:
        requests = [
            ask(FRANCE),
            ask(STORY, SamplingParams(max_tokens=5, temperature=0.0)),
            ask(FRANCE, SamplingParams(max_tokens=3, temperature=0.0)),
        ]
        alone = [await backend.generate(r) for r in requests]
        together = await asyncio.gather(*(backend.generate(r) for r in requests))
        return alone, list(together)

    alone, together = run(body)
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]  # type: ignore[attr-defined]


def test_seeded_sampling_is_reproducible(run: Callable) -> None:  # type: ignore[type-arg]
    seeded = SamplingParams(max_tokens=6, temperature=1.0, top_p=0.95, seed=5)

    async def body(backend: InferenceBackend) -> list[object]:
        return [await backend.generate(ask(STORY, seeded)) for _ in range(2)]

    first, second = run(body)
    assert first.token_ids == second.token_ids  # type: ignore[attr-defined]


def test_context_length_and_model_versions(run: Callable) -> None:  # type: ignore[type-arg]
    huge = (ChatMessage(role="user", content="hello " * 9000),)

    async def body(backend: InferenceBackend) -> None:
        with pytest.raises(ContextLengthError, match=r"exceeds the model's context length of 8192 tokens"):
            backend.check(ask(huge))
        with pytest.raises(ContextLengthError):
            await backend.generate(ask(huge))
        assert backend.serves(BASE)
        assert backend.serves(f"{BASE}+abc")
        assert not backend.serves("another-model")
        with pytest.raises(Exception, match="abc"):
            await backend.load(f"{BASE}+abc")

    run(body)
