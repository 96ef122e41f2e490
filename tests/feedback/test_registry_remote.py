"""Adapter versions fetched by hash over real HTTP: the worker's registry routes under uvicorn, a
gateway-side registry in another directory, real LoRA adapters, real files."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from api_keys import SEEDED_BOOK, SEEDED_KEYS, bearer
from fastapi import FastAPI
from lora_adapters import random_lora

from feedback.errors import ConfigError, RegistryError
from feedback.registry import AdapterRegistry
from feedback.registry_remote import RemoteRegistry, open_registry
from feedback.settings import ModelSettings, Settings, load_settings
from services.cli.ports import free_port
from services.worker.registry_api import router

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
CONTENT = ("adapter_config.json", "adapter_model.safetensors", "dataset_manifest.json")
MANIFEST = {"rows": 3, "source": "remote-test"}


@pytest.fixture(scope="module")
def adapter(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_lora(model_dir, tmp_path_factory.mktemp("lora") / "adapter", seed=7, rank=2, modules=("q_proj",))


@pytest.fixture
def served(tmp_path: Path, adapter: Path, serve_app: ServeApp) -> Iterator[tuple[str, AdapterRegistry, str]]:
    """The registry routes on a registry holding one version: (url, that registry, the version)."""
    registry = AdapterRegistry(tmp_path / "worker-registry")
    version = registry.register(adapter, dataset_manifest=MANIFEST, lineage={"parent": None})
    app = FastAPI()
    app.state.settings = Settings(model={"registry_dir": registry.root})
    app.state.keys = SEEDED_BOOK
    app.include_router(router)
    with serve_app(app) as url:
        yield url, registry, version


def gateway_registry(tmp_path: Path, url: str, role: str | None = "developer", retries: int = 0) -> AdapterRegistry:
    key = SEEDED_KEYS[role] if role else None
    return AdapterRegistry(tmp_path / "gateway-registry", RemoteRegistry(url, key, timeout_s=10, retries=retries))


def test_a_missing_version_is_fetched_by_hash_and_then_served_locally(
    tmp_path: Path, served: tuple[str, AdapterRegistry, str], serve_app: ServeApp
) -> None:
    url, worker, version = served
    local = gateway_registry(tmp_path, url)
    path = local.fetch(version)
    assert path == local.root / version
    assert sorted(p.name for p in path.iterdir()) == sorted(CONTENT)
    for name in CONTENT:
        assert (path / name).read_bytes() == (worker.root / version / name).read_bytes()
    assert [p.name for p in local.root.iterdir()] == [version]  # no staging directory left
    # a local hit never asks the server: the same registry, pointed at a port nothing listens on
    offline = AdapterRegistry(local.root, RemoteRegistry(f"http://127.0.0.1:{free_port()}", None, retries=0))
    assert offline.fetch(version) == path


def test_a_file_tampered_on_the_server_is_refused_and_nothing_is_kept(
    tmp_path: Path, served: tuple[str, AdapterRegistry, str]
) -> None:
    url, worker, version = served
    weights = worker.root / version / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # same size, one byte changed after registration
    local = gateway_registry(tmp_path, url)
    with pytest.raises(RegistryError) as info:
        local.fetch(version)
    assert str(info.value).startswith(f"adapter version '{version}' was refused: the downloaded files hash to '")
    assert str(info.value).endswith("' instead")
    assert list(local.root.iterdir()) == []


def test_an_unknown_version_is_a_404_naming_it(tmp_path: Path, served: tuple[str, AdapterRegistry, str]) -> None:
    url, _, _ = served
    unknown = "0" * 64
    with pytest.raises(RegistryError) as info:
        gateway_registry(tmp_path, url).fetch(unknown)
    assert str(info.value) == (
        f"adapter version '{unknown}' is not in the registry at {url}: adapter version {unknown} is not in the registry"
    )
    assert list((tmp_path / "gateway-registry").iterdir()) == []


def test_keys_without_the_models_permission_are_refused(
    tmp_path: Path, served: tuple[str, AdapterRegistry, str]
) -> None:
    url, _, version = served
    advice = "model.registry_key must be a developer's or an admin's API key"
    with pytest.raises(RegistryError) as analyst:
        gateway_registry(tmp_path, url, role="analyst").fetch(version)
    assert str(analyst.value) == (
        f"the registry at {url} refused the key (HTTP 403: the role 'analyst' may not models; "
        f"admin or developer may); {advice}"
    )
    with pytest.raises(RegistryError) as anonymous:
        gateway_registry(tmp_path, url, role=None).fetch(version)
    assert str(anonymous.value) == (
        f"the registry at {url} refused the key (HTTP 401: this endpoint needs an Authorization: "
        f"Bearer <API key> header); {advice}"
    )
    assert gateway_registry(tmp_path, url, role="admin").fetch(version).name == version


def test_the_routes_serve_known_names_of_well_formed_versions_only(served: tuple[str, AdapterRegistry, str]) -> None:
    url, worker, version = served
    headers = bearer(SEEDED_KEYS["developer"])
    manifest = httpx.get(f"{url}/v1/registry/{version}", headers=headers, timeout=30)
    files = worker.root / version
    assert manifest.json() == {
        "version": version,
        "files": [
            {
                "name": n,
                "size": (files / n).stat().st_size,
                "sha256": hashlib.sha256((files / n).read_bytes()).hexdigest(),
            }
            for n in CONTENT
        ],
    }
    lineage = httpx.get(f"{url}/v1/registry/{version}/lineage.json", headers=headers, timeout=30)
    assert (lineage.status_code, lineage.json()) == (
        404,
        {
            "detail": "an adapter version has no file 'lineage.json'; its files are "
            "adapter_config.json, adapter_model.safetensors, dataset_manifest.json"
        },
    )
    escape = httpx.get(f"{url}/v1/registry/{version}/..%2Flineage.json", headers=headers, timeout=30)
    assert escape.status_code == 404
    for malformed in ("nope", "A" * 64, "0" * 63):
        assert httpx.get(f"{url}/v1/registry/{malformed}", headers=headers, timeout=30).status_code == 422
        assert httpx.get(f"{url}/v1/registry/{malformed}/adapter_config.json", headers=headers).status_code == 422
    missing = httpx.get(f"{url}/v1/registry/{'1' * 64}/adapter_config.json", headers=headers, timeout=30)
    assert (missing.status_code, missing.json()) == (
        404,
        {"detail": f"adapter version {'1' * 64} is not in the registry"},
    )


def test_connection_failures_are_retried_then_reported(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RegistryError) as info:
        gateway_registry(tmp_path, url, retries=1).fetch("2" * 64)
    assert str(info.value).startswith(f"the registry at {url} failed 2 times, the last with: ")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    with pytest.raises(RegistryError, match="is not in the registry: not 64 hex digits"):
        gateway_registry(tmp_path, url).fetch("../worker-registry")


def test_production_needs_a_real_key_for_a_remote_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SECURITY__ENVIRONMENT", "production")
    monkeypatch.setenv("FLYWHEEL_SECURITY__SIGNING_KEY", "s3cret-key")
    assert load_settings().model.registry_url is None
    monkeypatch.setenv("FLYWHEEL_MODEL__REGISTRY_URL", "http://worker:8100")
    refused = (
        "model.registry_key: must be a developer's or an admin's API key (fwk_<id>_<secret>) in production "
        "when model.registry_url is set"
    )
    with pytest.raises(ConfigError) as missing:
        load_settings()
    assert str(missing.value) == refused
    monkeypatch.setenv("FLYWHEEL_MODEL__REGISTRY_KEY", "changeme")
    with pytest.raises(ConfigError) as placeholder:
        load_settings()
    assert str(placeholder.value) == refused
    monkeypatch.setenv("FLYWHEEL_MODEL__REGISTRY_KEY", SEEDED_KEYS["developer"])
    model = load_settings().model
    assert model.registry_key is not None
    assert model.registry_key.get_secret_value() == SEEDED_KEYS["developer"]
    assert SEEDED_KEYS["developer"] not in repr(model)
    monkeypatch.setenv("FLYWHEEL_SECURITY__ENVIRONMENT", "development")
    monkeypatch.setenv("FLYWHEEL_MODEL__REGISTRY_KEY", "changeme")
    assert load_settings().model.registry_url == "http://worker:8100"  # development takes any key


def test_open_registry_adds_the_remote_only_when_configured(tmp_path: Path) -> None:
    assert open_registry(ModelSettings(registry_dir=tmp_path)).remote is None
    remote = open_registry(ModelSettings(registry_dir=tmp_path, registry_url="http://worker:8100/")).remote
    assert isinstance(remote, RemoteRegistry)
    assert remote.url == "http://worker:8100"
