"""The contract every inference backend passes: the transformers one everywhere, vLLM where a GPU is.

Each backend is started once for the module, on an event loop of its own, and every case runs on
it. Numbers are checked against a teacher-forced pass of the reference runtime (float32 on the
CPU), so every backend must compute the same confidence for the same tokens, up to the rounding
of the dtype it computes in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest
from vllm_extra import preload_vllm

from feedback.events import ChatMessage
from feedback.model.runtime import ModelRuntime, SamplingParams
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import GatewaySettings, ModelSettings, VLLMSettings
from services.gateway import vllm_backend
from services.gateway.backend import ContextLengthError, GenerationRequest, InferenceBackend, TransformersBackend
from services.gateway.metrics import GatewayMetrics

T = TypeVar("T")
BASE = "smollm2-135m-instruct"
FRANCE = (ChatMessage(role="user", content="What is the capital of France?"),)
STORY = (ChatMessage(role="user", content="Write a long story about a dragon who learns to cook."),)
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
# Largest difference of a token's log-probability from the reference's, nats, for a backend computing in
# bfloat16 (vLLM's LoRA kernels take 16-bit activations only): 8 significant bits per activation and logit
BF16_LOGPROB_TOLERANCE = 0.25

BackendFactory = Callable[[ModelRuntime], InferenceBackend]
# vLLM 0.20's engine client leaves its zmq context to the garbage collector after shutdown (which closes it)
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function Context.__del__:pytest.PytestUnraisableExceptionWarning"
)


@dataclass(frozen=True)
class Contender:
    """A backend under contract and how close its log-probabilities come to the reference runtime's."""

    make: BackendFactory
    logprob_tolerance: float


def _vllm(runtime: ModelRuntime) -> InferenceBackend:
    # enforce_eager: seconds to start instead of minutes of compilation; 0.3 of the GPU leaves room for the rest
    engine = VLLMSettings(enforce_eager=True, gpu_memory_utilization=0.3)
    model_dir = prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)  # the directory `runtime` was loaded from
    return vllm_backend.VLLMBackend(model_dir, GatewaySettings(vllm=engine))


FACTORIES: dict[str, Contender] = {
    "transformers": Contender(lambda runtime: TransformersBackend(runtime, GatewaySettings(batch_wait_ms=20)), 1e-3),
}
if preload_vllm():
    FACTORIES["vllm"] = Contender(_vllm, BF16_LOGPROB_TOLERANCE)


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def started(
    request: pytest.FixtureRequest, runtime: ModelRuntime
) -> Iterator[tuple[asyncio.Runner, InferenceBackend, Contender]]:
    contender = FACTORIES[request.param]
    with asyncio.Runner() as loop:
        backend = contender.make(runtime)
        loop.run(backend.start(GatewayMetrics()))
        try:
            yield loop, backend, contender
        finally:
            loop.run(backend.close())


@pytest.fixture
def run(
    started: tuple[asyncio.Runner, InferenceBackend, Contender],
) -> Callable[[Callable[[InferenceBackend], Awaitable[T]]], T]:
    loop, backend, _ = started

    def runner(body: Callable[[InferenceBackend], Awaitable[T]]) -> T:
        async def main() -> T:
            return await body(backend)

        return loop.run(main())

    return runner


@pytest.fixture
def tolerance(started: tuple[asyncio.Runner, InferenceBackend, Contender]) -> float:
    return started[2].logprob_tolerance


def ask(messages: tuple[ChatMessage, ...], params: SamplingParams = GREEDY, **kw: object) -> GenerationRequest:
    return GenerationRequest(messages, params, BASE, **kw)  # type: ignore[arg-type]


def test_confidence_is_the_reference_number_for_the_same_tokens(
    run: Callable,  # type: ignore[type-arg]
    runtime: ModelRuntime,
    tolerance: float,
) -> None:
    got = run(lambda b: b.generate(ask(FRANCE)))
    scored = runtime.score_tokens(runtime.render_prompt([m.model_dump() for m in FRANCE]), got.token_ids)
    assert max(abs(a - b) for a, b in zip(got.token_logprobs, scored, strict=True)) < tolerance
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
