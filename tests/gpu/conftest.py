"""Fixtures of the GPU tests: a vLLM engine and the transformers backend on one GPU, LoRA adapters, references.

The tests here need a CUDA GPU and vLLM; elsewhere they are skipped. infra/gpu/install.sh installs
vLLM beside the machine's own torch and runs them. Each module starts one vLLM engine (eager mode,
seconds to start) on an event loop of its own and keeps it for all its tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lora_adapters import random_lora
from reference_scores import Score, scorer
from vllm_extra import preload_vllm

from feedback.model.runtime import ModelRuntime
from feedback.registry import AdapterRegistry
from feedback.settings import GatewaySettings, VLLMSettings
from services.gateway import vllm_backend
from services.gateway.backend import TransformersBackend
from services.gateway.metrics import GatewayMetrics

preload_vllm()


@pytest.fixture(scope="module")
def registry(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterRegistry:
    return AdapterRegistry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def new_adapter(
    model_dir: Path, registry: AdapterRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, int], str]:
    """Registers a new random adapter: (name, seed) -> its version."""

    def register(name: str, seed: int) -> str:
        adapter = random_lora(model_dir, tmp_path_factory.mktemp("lora") / name, seed)
        return registry.register(adapter, dataset_manifest={"name": name}, lineage={"parent": None})

    return register


@pytest.fixture(scope="module")
def adapters(new_adapter: Callable[[str, int], str]) -> dict[str, str]:
    """Two registered adapter versions by name ("first", "second")."""
    return {name: new_adapter(name, seed) for seed, name in enumerate(("first", "second"), start=1)}


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    """The module's event loop: the engines live on it from test to test."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture(scope="module")
def vllm(
    loop: asyncio.Runner, model_dir: Path, registry: AdapterRegistry, metrics: GatewayMetrics
) -> Iterator[vllm_backend.VLLMBackend]:
    """The vLLM backend on the default model, bfloat16, eager (no compilation), 0.3 of the GPU's memory."""
    settings = GatewaySettings(vllm=VLLMSettings(enforce_eager=True, gpu_memory_utilization=0.3))
    backend = vllm_backend.VLLMBackend(model_dir, settings, registry)
    loop.run(backend.start(metrics))
    try:
        yield backend
    finally:
        loop.run(backend.close())


@pytest.fixture(scope="module")
def transformers_gpu(
    loop: asyncio.Runner, model_dir: Path, registry: AdapterRegistry, vllm: vllm_backend.VLLMBackend
) -> Iterator[TransformersBackend]:
    """The transformers backend on the same GPU in float32 (the reference numerics), after vLLM has started."""
    runtime = ModelRuntime.load(model_dir, device="cuda", dtype="float32")
    backend = TransformersBackend(runtime, GatewaySettings(batch_wait_ms=5), registry)
    loop.run(backend.start(GatewayMetrics()))
    try:
        yield backend
    finally:
        loop.run(backend.close())


@pytest.fixture(scope="module")
def reference(model_dir: Path, registry: AdapterRegistry, transformers_gpu: TransformersBackend) -> Score:
    """Teacher-forced float32 log-probabilities on the GPU, with the base model alone or one adapter applied."""
    return scorer(model_dir, registry)
