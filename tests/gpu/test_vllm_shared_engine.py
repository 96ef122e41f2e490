"""Two gateway processes' clients of one shared vLLM engine (services.gateway.shared_engine).

The engine is started as ``flywheel gateway --processes N`` starts it (:func:`shared_engine.launch`); its two
clients are the backends two gateway processes build, here on one event loop. Each client must get the
weights of the adapter it names, though the two learnt of the adapters in different orders, and their
requests must share the engine's batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from reference_scores import Score, scorer
from test_vllm_serving import BASE, PROMPTS, TOKEN_TOLERANCE, _observed_batches_above, ask, prompt_ids

from feedback.deployments import join_version
from feedback.model.runtime import ModelRuntime, SamplingParams
from feedback.registry import AdapterRegistry
from feedback.settings import GatewaySettings, ModelSettings, Settings, VLLMSettings
from services.gateway import shared_engine, vllm_backend
from services.gateway.metrics import GatewayMetrics

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not vllm_backend.available(), reason="needs a CUDA GPU and vLLM (infra/gpu/install.sh)"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function Context.__del__:pytest.PytestUnraisableExceptionWarning"
    ),
]

Pair = tuple[vllm_backend.VLLMBackend, vllm_backend.VLLMBackend]
GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def shared_metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture(scope="module")
def pair(
    loop: asyncio.Runner,
    model_dir: Path,
    registry: AdapterRegistry,
    shared_metrics: GatewayMetrics,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pair]:
    """One engine (eager, 0.3 of the GPU) and the backends of gateway processes 0 and 1 on it."""
    settings = Settings(
        model=ModelSettings(registry_dir=registry.root),
        gateway=GatewaySettings(
            vllm=VLLMSettings(enforce_eager=True, gpu_memory_utilization=0.3),
            wal={"dir": tmp_path_factory.mktemp("wal")},  # type: ignore[arg-type]
        ),
    )
    with shared_engine.launch(settings, 2) as (engine, alive):
        backends = [
            vllm_backend.VLLMBackend(model_dir, settings.gateway, registry, shared=engine.client(i)) for i in (0, 1)
        ]
        for backend in backends:
            loop.run(backend.start(shared_metrics))
        try:
            yield backends[0], backends[1]
            assert alive()
        finally:
            for backend in backends:
                loop.run(backend.close())


@pytest.fixture(scope="module")
def float32(pair: Pair, model_dir: Path, registry: AdapterRegistry) -> Score:
    return scorer(model_dir, registry)


def test_each_process_gets_the_weights_of_the_adapter_it_names(
    loop: asyncio.Runner, pair: Pair, adapters: dict[str, str], float32: Score, runtime: ModelRuntime
) -> None:
    """Process 0 learns of "first", then process 1 of "second": with ids of their own both would call theirs 1."""
    first, second = adapters["first"], adapters["second"]
    zero, one = pair
    loop.run(zero.load(join_version(BASE, first)))
    loop.run(one.load(join_version(BASE, second)))
    prompt = prompt_ids(runtime, PROMPTS[0])
    other = {first: second, second: first, None: first}  # whose weights a mix-up would have used
    answers: dict[tuple[int, str | None], tuple[int, ...]] = {}
    for index, backend in enumerate(pair):
        for adapter in (second, first, None):
            version = BASE if adapter is None else join_version(BASE, adapter)
            generation = loop.run(backend.generate(ask(PROMPTS[0], version, GREEDY)))
            ids, numbers = generation.token_ids, generation.token_logprobs
            own = max(abs(a - b) for a, b in zip(numbers, float32(adapter, prompt, ids), strict=True))
            theirs = max(abs(a - b) for a, b in zip(numbers, float32(other[adapter], prompt, ids), strict=True))
            assert own < TOKEN_TOLERANCE
            assert own < theirs
            answers[index, adapter] = ids
    for adapter in (first, second, None):
        assert answers[0, adapter] == answers[1, adapter]


def test_both_processes_requests_share_the_engines_batches(
    loop: asyncio.Runner, pair: Pair, shared_metrics: GatewayMetrics
) -> None:
    """32 requests from each process at once: some engine step runs more than one process's 32."""
    long = SamplingParams(max_tokens=48, temperature=0.0)

    async def both() -> list[int]:
        requests = [backend.generate(ask(PROMPTS[1], BASE, long)) for backend in pair for _ in range(32)]
        return [g.completion_tokens for g in await asyncio.gather(*requests)]

    assert all(tokens > 0 for tokens in loop.run(both()))
    assert _observed_batches_above(shared_metrics, 32)  # 32 is a bucket bound of flywheel_batch_size
