"""``flywheel models list|show|promote|rollback`` as a user runs it, over a registry on disk.

``promote`` and ``rollback`` run against a real gateway (real model, a real LoRA adapter from the
registry, the deployments topic on the real broker).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import Keys, bearer
from fastapi import FastAPI
from peft import LoraConfig, get_peft_model
from test_cli import flywheel
from typer.testing import CliRunner

from feedback.apikeys import parse_key
from feedback.model.runtime import ModelRuntime
from feedback.registry import AdapterRegistry
from feedback.settings import KafkaSettings, Settings
from services.cli.main import app as cli
from services.cli.ports import free_port
from services.gateway.app import create_app
from services.gateway.backend import TransformersBackend

KEYS: Keys = {}  # this test's keys on its keys topic, set by the ``gateway`` fixture
BASE = "smollm2-135m-instruct"
ServeApp = Callable[[FastAPI], AbstractContextManager[str]]


def registry_with_two_versions(tmp_path: Path) -> tuple[Path, str, str]:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 2}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")  # the registry hashes bytes; it loads nothing
    registry = AdapterRegistry(tmp_path / "registry")
    first = registry.register(adapter, dataset_manifest={"day": 1}, lineage={"parent": None})
    second = registry.register(adapter, dataset_manifest={"day": 2}, lineage={"parent": first})
    registry.set_state(first, "champion")
    return registry.root, first, second


def test_models_list_and_show(tmp_path: Path) -> None:
    root, first, second = registry_with_two_versions(tmp_path)

    listed = flywheel("models", "list", "--registry", str(root), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["version"], r["state"], r["parent"]) for r in json.loads(listed.stdout)] == [
        (first, "champion", None),
        (second, "candidate", first),
    ]
    table = flywheel("models", "list", "--registry", str(root))
    assert first[:12] in table.stdout
    assert "candidate" in table.stdout

    shown = flywheel("models", "show", second, "--registry", str(root))
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["parent"] == first

    unknown = flywheel("models", "show", "f" * 64, "--registry", str(root))
    assert unknown.returncode == 1
    assert "no readable lineage" in unknown.stderr


@pytest.fixture(scope="module")
def lora(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real LoRA adapter of the default model (peft's default init: it changes no answer)."""
    out = tmp_path_factory.mktemp("lora")
    runtime = ModelRuntime.load(model_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        get_peft_model(runtime.model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(out)
    return out


@pytest.fixture
def gateway(
    tmp_path: Path, lora: Path, kafka_isolated: KafkaSettings, api_keys: Keys, model_dir: Path, serve_app: ServeApp
) -> Iterator[tuple[str, Path, str, str]]:
    """A gateway serving adapters from a registry that holds two versions: (url, registry, first, second)."""
    registry = AdapterRegistry(tmp_path / "registry")
    first = registry.register(lora, dataset_manifest={"day": 1}, lineage={"parent": None})
    second = registry.register(lora, dataset_manifest={"day": 2}, lineage={"parent": first})
    settings = Settings.model_validate(
        {
            "kafka": kafka_isolated.model_dump(),
            "gateway": {"wal": {"dir": tmp_path / "wal"}, "drain_timeout_s": 10},
            "model": {"registry_dir": registry.root},
        }
    )
    KEYS.update(api_keys)
    backend = TransformersBackend(ModelRuntime.load(model_dir), settings.gateway, registry)
    with serve_app(create_app(settings, backend=backend)) as url:
        yield url, registry.root, first, second


def admin(url: str, path: str = "", body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.request(
        "POST" if path else "GET",
        f"{url}/v1/admin/deployments{path}",
        json=body,
        headers=bearer(KEYS["admin"]),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def models(action: str, *args: str, url: str, registry: Path) -> tuple[int, str, str]:
    result = flywheel(
        "models",
        action,
        *args,
        "--url",
        url,
        "--registry",
        str(registry),
        env={"FLYWHEEL_API_KEY": KEYS.get("admin", "")},
    )
    return result.returncode, result.stdout, result.stderr


def states(registry: Path) -> dict[str, str]:
    return {r["version"]: r["state"] for r in AdapterRegistry(registry).versions()}


def test_models_promote_checks_the_challenger_then_promotes_it(gateway: tuple[str, Path, str, str]) -> None:
    url, registry, first, second = gateway
    assert models("promote", url=url, registry=registry) == (
        1,
        "",
        "there is no challenger to promote; nothing changed\n",
    )
    admin(url, "/challenger", {"model_version": f"{BASE}+{first}"})

    code, out, err = models("promote", second, url=url, registry=registry)
    assert (code, out) == (1, "")
    assert err == f"'{second}' is not the current challenger ({BASE}+{first}); nothing changed\n"
    code, out, err = models("promote", first[:11], url=url, registry=registry)  # shorter than `models list` shows
    assert (code, err) == (1, f"'{first[:11]}' is not the current challenger ({BASE}+{first}); nothing changed\n")
    assert admin(url)["challenger"] == f"{BASE}+{first}"
    assert states(registry) == {first: "candidate", second: "candidate"}

    code, out, err = models("promote", first[:12], url=url, registry=registry)
    assert (code, err) == (0, "")
    assert out == f"promoted {BASE}+{first}; champion {BASE}+{first} (revision 2)\nregistry: {first} is now champion\n"
    view = admin(url)
    assert (view["champion"], view["challenger"], view["revision"]) == (f"{BASE}+{first}", None, 2)
    assert states(registry) == {first: "champion", second: "candidate"}

    admin(url, "/challenger", {"model_version": f"{BASE}+{second}"})
    code, out, err = models("promote", f"{BASE}+{second}", url=url, registry=registry)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"promoted {BASE}+{second}; champion {BASE}+{second} (revision 4)",
        f"registry: {first} is now retired",
        f"registry: {second} is now champion",
    ]
    history = AdapterRegistry(registry).lineage(first)["history"]
    who = f"test-admin ({parse_key(KEYS['admin'])[0]})"
    assert [(c["state"], c["by"], c["revision"]) for c in history] == [("champion", who, 2), ("retired", who, 4)]


def test_models_rollback_rejects_the_challenger(gateway: tuple[str, Path, str, str]) -> None:
    url, registry, first, second = gateway
    admin(url, "/challenger", {"model_version": f"{BASE}+{first}"})
    admin(url, "/mode", {"mode": "ab", "step": 1})

    code, out, err = models("rollback", f"{BASE}+{second}", url=url, registry=registry)
    assert (code, out, err) == (
        1,
        "",
        f"'{BASE}+{second}' is not the current challenger ({BASE}+{first}); nothing changed\n",
    )
    code, out, err = models("rollback", url=url, registry=registry)  # no VERSION: the challenger, whichever it is
    assert (code, err) == (0, "")
    assert out == f"rolled back {BASE}+{first}; champion {BASE} (revision 3)\nregistry: {first} is now rejected\n"
    assert states(registry) == {first: "rejected", second: "candidate"}
    assert admin(url)["phase"] == "champion-only"
    assert models("rollback", url=url, registry=registry) == (
        1,
        "",
        "there is no challenger to roll back; nothing changed\n",
    )


def test_models_promote_without_a_gateway_exits_3(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = models("promote", url=url, registry=tmp_path / "registry")
    assert (code, out) == (3, "")
    assert err.startswith(f"gateway at {url} is not reachable:")


class FakeGateway:
    """Answers the admin endpoints with canned responses, in order: a pure unit test of the CLI's side."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.calls: list[tuple[str, str]] = []

    def __call__(self, method: str, url: str, **_: object) -> httpx.Response:
        self.calls.append((method, url))
        return self.responses.pop(0)


def view(revision: int, challenger: str | None) -> dict[str, Any]:
    return {"deployment_id": f"d{revision}", "revision": revision, "champion": BASE, "challenger": challenger}


def run_with(gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(httpx, "request", gateway)
    result = CliRunner().invoke(cli, ["models", *args, "--url", "http://gw", "--registry", "/nonexistent"])
    return result.exit_code, result.output


def test_a_change_that_raced_another_is_reported_not_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    challenger = f"{BASE}+{'a' * 64}"
    raced = FakeGateway(httpx.Response(200, json=view(4, challenger)), httpx.Response(200, json=view(6, None)))
    code, output = run_with(raced, monkeypatch, "rollback", "a" * 12)
    assert code == 1
    assert output == (
        f"the deployment changed while this ran (read revision 4, now 6: champion {BASE}, challenger None); "
        "check it with `flywheel deploy show`\n"
    )
    assert raced.calls == [
        ("GET", "http://gw/v1/admin/deployments"),
        ("POST", "http://gw/v1/admin/deployments/rollback"),
    ]


def test_an_answer_that_is_no_deployment_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = run_with(FakeGateway(httpx.Response(200, text="<html>")), monkeypatch, "promote")
    assert (code, output) == (1, "http://gw answered with no JSON; is it a flywheel gateway?\n")
    code, output = run_with(FakeGateway(httpx.Response(200, json=[1])), monkeypatch, "promote")
    assert (code, output) == (1, "the gateway answered with no deployment: Field required\n")
