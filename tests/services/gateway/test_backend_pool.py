"""The backend pool with fake backends: pinned backends, bases loaded once on demand, released when unused."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from api_keys import ADMIN, SEEDED_BOOK, USER
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from test_api import CHAT, make_settings

from feedback import deployments
from feedback.errors import ModelNotFoundError
from services.gateway.app import create_app
from services.gateway.metrics import GatewayMetrics
from services.gateway.pool import BackendPool


class FakeBaseLoader:
    """Opens a FakeBackend per base, counting calls; ``gate`` holds a load until set."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.backends: dict[str, FakeBackend] = {}
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, base: str) -> FakeBackend:
        self.gate.wait(10)
        if base.startswith("/missing"):
            raise ModelNotFoundError(f"model path {base!r} does not exist")
        self.opened.append(base)
        self.backends[base] = FakeBackend(base="loaded-name", text=f"from {base}")
        return self.backends[base]


def metric(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def started(loader: FakeBaseLoader) -> tuple[BackendPool, FakeBackend, GatewayMetrics]:
    pinned, metrics = FakeBackend(), GatewayMetrics()
    pool = BackendPool([pinned], loader)
    await pool.start(metrics)
    return pool, pinned, metrics


def test_pinned_backends_serve_their_versions_without_loading() -> None:
    async def scenario() -> None:
        loader = FakeBaseLoader()
        pool, pinned, _ = await started(loader)
        await pool.load("fake-model@1+v1")
        assert pool.backend_for("fake-model@1+v1") is pinned
        assert (pinned.started, pinned.loaded, loader.opened) == (True, ["fake-model@1+v1"], [])
        with pytest.raises(LookupError, match="base model '/models/other' is not loaded"):
            pool.backend_for("/models/other+v1")
        await pool.close()
        assert pinned.closed

    asyncio.run(scenario())


def test_a_base_loads_once_for_concurrent_callers_and_is_released_when_unused() -> None:
    async def scenario() -> None:
        loader = FakeBaseLoader()
        loader.gate.clear()
        pool, pinned, metrics = await started(loader)
        loads = [asyncio.create_task(pool.load(v)) for v in ("/models/other+v1", "/models/other+v2")]
        await asyncio.sleep(0.05)
        assert (pool.loading, pool.loaded) == (["/models/other"], [])
        assert metric(metrics, "flywheel_base_models", state="loading") == 1.0
        with pytest.raises(LookupError, match="base model '/models/other' is still loading"):
            pool.backend_for("/models/other+v1")
        loader.gate.set()
        await asyncio.gather(*loads)
        other = loader.backends["/models/other"]
        assert loader.opened == ["/models/other"]
        assert (pool.loading, pool.loaded) == ([], ["/models/other"])
        assert pool.backend_for("/models/other+v2") is other
        assert (other.started, other.loaded) == (True, ["/models/other+v1", "/models/other+v2"])
        assert metric(metrics, "flywheel_base_models", state="loaded") == 1.0

        await pool.retain(["fake-model@1", "/models/other+v2"])
        assert not other.closed
        await pool.retain(["fake-model@1", None])
        assert (other.closed, pinned.closed, pool.loaded) == (True, False, [])
        assert metric(metrics, "flywheel_base_models", state="loaded") == 0.0
        await pool.close()

    asyncio.run(scenario())


def test_a_base_that_fails_to_load_raises_and_is_counted() -> None:
    async def scenario() -> None:
        pool, _, metrics = await started(FakeBaseLoader())
        with pytest.raises(ModelNotFoundError, match="model path '/missing/base' does not exist"):
            await pool.load("/missing/base+v1")
        assert (pool.loading, pool.loaded) == ([], [])
        assert metric(metrics, "flywheel_model_load_failures_total") == 1.0
        await pool.close()

    asyncio.run(scenario())


def test_a_pool_without_a_loader_names_the_problem() -> None:
    async def scenario() -> None:
        pool = BackendPool([FakeBackend()])
        await pool.start(GatewayMetrics())
        with pytest.raises(LookupError, match="this gateway loads no other bases"):
            await pool.load("other-model")
        await pool.close()

    asyncio.run(scenario())


def test_a_challenger_on_a_missing_base_is_refused_with_a_404(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    app = create_app(make_settings(tmp_path), backend=FakeBackend(), keys=SEEDED_BOOK)
    with TestClient(app, headers=USER) as client:
        response = client.post(
            "/v1/admin/deployments/challenger",
            json={"model_version": str(missing)},
            headers=ADMIN,
        )
        view = client.get("/v1/admin/deployments", headers=ADMIN).json()
        ready = client.get("/readyz").json()
        text = client.get("/metrics").text
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": f"model version {str(missing)!r} cannot be served: model path {str(missing)!r} does not exist",
        "type": "not_found_error",
        "param": "model_version",
        "code": None,
    }
    assert (view["challenger"], view["revision"], ready["bases_loading"], ready["bases_loaded"]) == (None, 0, [], [])
    assert "flywheel_model_load_failures_total 1.0" in text


def test_a_base_loaded_for_a_change_that_cannot_be_published_is_released(tmp_path: Path) -> None:
    loader = FakeBaseLoader()
    app = create_app(make_settings(tmp_path), backend=FakeBackend(), open_base=loader, keys=SEEDED_BOOK)
    with TestClient(app, headers=USER) as client:
        response = client.post(
            "/v1/admin/deployments/challenger",
            json={"model_version": "/models/other"},
            headers=ADMIN,
        )
        ready = client.get("/readyz").json()
    assert response.status_code == 503
    assert response.json()["error"]["message"].startswith("the deployments topic is unreachable: ")
    assert loader.opened == ["/models/other"]
    assert (ready["challenger"], ready["bases_loaded"], loader.backends["/models/other"].closed) == (None, [], True)


def test_a_deployment_on_another_base_loads_it_while_the_champion_serves(tmp_path: Path) -> None:
    loader = FakeBaseLoader()
    loader.gate.clear()
    app = create_app(make_settings(tmp_path), backend=FakeBackend(), open_base=loader, keys=SEEDED_BOOK)
    with TestClient(app, headers=USER) as client:
        chat = app.state.chat
        state = deployments.set_challenger(chat.deployment, "/models/other+v1", by="test")
        applying = client.portal.start_task_soon(chat.apply, state)  # type: ignore[union-attr]
        while not chat.pool.loading:
            time.sleep(0.01)
        loading = client.get("/readyz").json()
        answer = client.post("/v1/chat/completions", json=CHAT)
        loader.gate.set()
        applying.result(timeout=10)
        loaded = client.get("/readyz").json()
        other = loader.backends["/models/other"]
        shadowed = client.post("/v1/chat/completions", json=CHAT)
        while chat.shadow.in_flight:  # the shadow copy on the other base
            time.sleep(0.01)
        client.portal.call(chat.apply, deployments.roll_back(chat.deployment, by="test"))  # type: ignore[union-attr]
        released = client.get("/readyz").json()
    assert (loading["ready"], loading["challenger"], loading["bases_loading"]) == (True, None, ["/models/other"])
    assert answer.json()["choices"][0]["message"]["content"] == "Paris."  # not held up by the load
    assert (loaded["challenger"], loaded["bases_loading"], loaded["bases_loaded"]) == (
        "/models/other+v1",
        [],
        ["/models/other"],
    )
    assert shadowed.status_code == 200
    assert [call.model_version for call in other.calls] == ["/models/other+v1"]
    assert (released["bases_loaded"], other.closed) == ([], True)
