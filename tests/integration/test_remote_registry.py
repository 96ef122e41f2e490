"""A gateway whose own registry is empty serves a challenger fetched by hash from a running worker.

Real parts: the worker app (its registry routes, keys from the keys topic) and the gateway app under
uvicorn on the session broker, the default model, a real LoRA adapter registered on the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from api_keys import Keys, bearer
from fastapi import FastAPI
from pipeline_events import worker_settings_in
from test_serving_deployments import gateway_settings, make_lora

from feedback.events import ChatMessage
from feedback.model.runtime import ModelRuntime, SamplingParams
from feedback.registry import AdapterRegistry
from feedback.registry_remote import open_registry
from feedback.settings import GatewaySettings, KafkaSettings, ModelSettings
from services.gateway.app import create_app as create_gateway
from services.gateway.backend import GenerationRequest, TransformersBackend
from services.gateway.metrics import GatewayMetrics
from services.worker.app import create_app as create_worker

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
BASE = "smollm2-135m-instruct"
PROMPT = "Name a colour."
MAX_TOKENS = 6
CHAT = {
    "model": "flywheel",
    "messages": [{"role": "user", "content": PROMPT}],
    "max_tokens": MAX_TOKENS,
    "temperature": 0,
}


@pytest.fixture
def worker_with_adapter(
    tmp_path: Path, kafka_isolated: KafkaSettings, model_dir: Path, api_keys: Keys, serve_app: ServeApp
) -> Iterator[tuple[str, AdapterRegistry, str]]:
    """A running worker whose registry holds one adapter: (url, its registry, the version)."""
    settings = worker_settings_in(tmp_path / "worker", kafka_isolated)
    registry = AdapterRegistry(settings.model.registry_dir)
    adapter = make_lora(model_dir, tmp_path / "lora", seed=5)
    version = registry.register(adapter, dataset_manifest={"rows": 0}, lineage={"parent": None})
    with serve_app(create_worker(settings)) as url:
        yield url, registry, version


def reference_answer(model_dir: Path, registry: AdapterRegistry, model_version: str) -> str:
    """The answer to ``CHAT`` from the worker's own copy of the adapter, on a backend of its own."""

    async def answer() -> str:
        backend = TransformersBackend(ModelRuntime.load(model_dir), GatewaySettings(), registry)
        await backend.start(GatewayMetrics())
        try:
            messages = (ChatMessage(role="user", content=PROMPT),)
            params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)
            return (await backend.generate(GenerationRequest(messages, params, model_version))).text
        finally:
            await backend.close()

    return asyncio.run(answer())


def test_a_gateway_with_only_the_remote_registry_serves_a_challenger_fetched_by_hash(
    tmp_path: Path,
    kafka_isolated: KafkaSettings,
    api_keys: Keys,
    model_dir: Path,
    worker_with_adapter: tuple[str, AdapterRegistry, str],
    serve_app: ServeApp,
) -> None:
    worker_url, worker_registry, version = worker_with_adapter
    local_root = tmp_path / "gateway-registry"
    settings = gateway_settings(tmp_path, kafka_isolated, local_root, "remote")
    model = ModelSettings(registry_dir=local_root, registry_url=worker_url, registry_key=api_keys["developer"])
    settings = settings.model_copy(update={"model": model})
    backend = TransformersBackend(ModelRuntime.load(model_dir), settings.gateway, open_registry(settings.model))
    admin, developer = bearer(api_keys["admin"]), bearer(api_keys["developer"])
    challenger = f"{BASE}+{version}"
    with serve_app(create_gateway(settings, backend=backend)) as url:
        unknown = httpx.post(
            f"{url}/v1/admin/deployments/challenger",
            json={"model_version": f"{BASE}+{'0' * 64}"},
            headers=admin,
            timeout=120,
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"]["message"] == (
            f"model version '{BASE}+{'0' * 64}' cannot be served: adapter version '{'0' * 64}' is not in the "
            f"registry at {worker_url}: adapter version {'0' * 64} is not in the registry"
        )
        assert not local_root.exists() or list(local_root.iterdir()) == []

        deployed = httpx.post(
            f"{url}/v1/admin/deployments/challenger", json={"model_version": challenger}, headers=admin, timeout=120
        )
        assert deployed.status_code == 200, deployed.text  # answered once this gateway applied it
        assert (deployed.json()["phase"], deployed.json()["challenger"]) == ("shadow", challenger)
        forced = httpx.post(
            f"{url}/v1/chat/completions",
            json=CHAT,
            headers=developer | {"X-Flywheel-Arm": "challenger"},
            timeout=120,
        ).json()
        champion = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=developer, timeout=120).json()

    assert [p.name for p in local_root.iterdir()] == [version]
    for name in ("adapter_config.json", "adapter_model.safetensors", "dataset_manifest.json"):
        assert (local_root / version / name).read_bytes() == (worker_registry.root / version / name).read_bytes()
    answer = forced["choices"][0]["message"]["content"]
    assert answer == reference_answer(model_dir, worker_registry, challenger)
    assert answer != champion["choices"][0]["message"]["content"]  # the random adapter answers otherwise
