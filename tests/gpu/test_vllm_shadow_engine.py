"""Shadow copies on an engine of their own (``gateway.vllm.shadow_engine``): two engines on one GPU.

The served requests' engine never sees a copy: a copy's adapter is added to the shadow engine alone, and
a copy gives the answer that a served request of the same version gives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from feedback.deployments import join_version
from feedback.events import ChatMessage
from feedback.model.runtime import SamplingParams
from feedback.registry import AdapterRegistry
from feedback.settings import GatewaySettings, VLLMSettings
from services.gateway import vllm_backend
from services.gateway.backend import GenerationRequest
from services.gateway.metrics import GatewayMetrics

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not vllm_backend.available(), reason="needs a CUDA GPU and vLLM (infra/gpu/install.sh)"),
    # vLLM 0.20's engine client leaves its zmq context to the garbage collector after shutdown (which closes it)
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function Context.__del__:pytest.PytestUnraisableExceptionWarning"
    ),
]

BASE = "smollm2-135m-instruct"
QUESTION = (ChatMessage(role="user", content="Name three things a good breakfast needs."),)
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def two_engines(loop: asyncio.Runner, model_dir: Path, registry: AdapterRegistry) -> Iterator[vllm_backend.VLLMBackend]:
    """The vLLM backend with a shadow engine: eager, 0.3 of the GPU's memory for the two together."""
    engine = VLLMSettings(enforce_eager=True, gpu_memory_utilization=0.3, shadow_engine=True)
    backend = vllm_backend.VLLMBackend(model_dir, GatewaySettings(vllm=engine), registry)
    loop.run(backend.start(GatewayMetrics()))
    try:
        yield backend
    finally:
        loop.run(backend.close())


def test_a_shadow_copy_runs_on_the_shadow_engine_alone_and_answers_as_a_served_request(
    loop: asyncio.Runner, two_engines: vllm_backend.VLLMBackend, new_adapter: Callable[[str, int], str]
) -> None:
    assert two_engines.engine_of("shadow") is not two_engines.engine
    version = join_version(BASE, new_adapter("shadowed", 5))

    async def run() -> None:
        copy = await two_engines.generate(GenerationRequest(QUESTION, GREEDY, version, role="shadow"))
        # the copy's adapter went to the shadow engine; the served requests' engine has never seen it
        assert len(await two_engines.engine_of("shadow").list_loras()) == 1
        assert await two_engines.engine.list_loras() == set()
        served = await two_engines.generate(GenerationRequest(QUESTION, GREEDY, version))
        assert await two_engines.engine.list_loras() == await two_engines.engine_of("shadow").list_loras()
        assert copy.completion_tokens > 0
        assert copy.token_ids == served.token_ids  # one request alone on either engine: the same greedy tokens
        assert copy.token_logprobs == pytest.approx(served.token_logprobs, abs=0.02)

    loop.run(run())


def test_loading_a_version_adds_it_to_both_engines(
    loop: asyncio.Runner, two_engines: vllm_backend.VLLMBackend, new_adapter: Callable[[str, int], str]
) -> None:
    version = join_version(BASE, new_adapter("loaded", 6))

    async def run() -> None:
        before = await two_engines.engine.list_loras()
        await two_engines.load(version)
        added = await two_engines.engine.list_loras() - before
        assert len(added) == 1
        assert added <= await two_engines.engine_of("shadow").list_loras()

    loop.run(run())
