"""Deployments on real parts: two gateways on one broker, a real LoRA challenger from the registry.

The admin endpoints and the ``flywheel deploy`` CLI change the deployment through the compacted
deployments topic; both gateways apply every change; a shadow challenger answers copies (a shadow
event with the same interaction id) while users get the champion's answer; A/B and forced arms
route to the challenger; promotion makes it the champion everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import Keys, bearer
from fastapi import FastAPI
from lora_adapters import random_lora
from test_serving_openai import interaction_events
from typer.testing import CliRunner

from feedback.model.runtime import ModelRuntime
from feedback.registry import AdapterRegistry
from feedback.settings import KafkaSettings, Settings
from feedback.signing import verify_id
from services.cli.main import app as cli
from services.gateway.app import create_app
from services.gateway.backend import TransformersBackend

KEYS: Keys = {}  # this test's keys on its keys topic, set by the ``two_gateways`` fixture
SIGNING_KEY = "deploy-signing-key"
ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
CHAT = {
    "model": "flywheel",
    "messages": [{"role": "user", "content": "Name a colour."}],
    "max_tokens": 6,
    "temperature": 0,
}


def make_lora(model_dir: Path, out_dir: Path, seed: int) -> Path:
    """The integration tests' adapter: rank 4 on the query and value projections, random weights."""
    return random_lora(model_dir, out_dir, seed, rank=4, alpha=32, modules=("q_proj", "v_proj"))


@pytest.fixture(scope="module")
def registry_with_adapter(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("registry")
    adapter = make_lora(model_dir, tmp_path_factory.mktemp("lora") / "adapter", seed=1)
    version = AdapterRegistry(root).register(adapter, dataset_manifest={"rows": 0}, lineage={"parent": None})
    return root, version


def gateway_settings(tmp_path: Path, kafka: KafkaSettings, registry: Path, name: str) -> Settings:
    return Settings.model_validate(
        {
            "kafka": kafka.model_dump(),
            "gateway": {"wal": {"dir": tmp_path / f"wal-{name}"}, "drain_timeout_s": 10},
            "security": {"signing_key": SIGNING_KEY},
            "model": {"registry_dir": registry},
        }
    )


@pytest.fixture
def two_gateways(
    tmp_path: Path,
    kafka_isolated: KafkaSettings,
    api_keys: Keys,
    model_dir: Path,
    registry_with_adapter: tuple[Path, str],
    serve_app: ServeApp,
) -> Iterator[list[str]]:
    KEYS.update(api_keys)
    registry = registry_with_adapter[0]
    with ExitStack() as stack:
        urls = []
        for name in ("a", "b"):
            settings = gateway_settings(tmp_path, kafka_isolated, registry, name)
            backend = TransformersBackend(ModelRuntime.load(model_dir), settings.gateway, AdapterRegistry(registry))
            urls.append(stack.enter_context(serve_app(create_app(settings, backend=backend))))
        yield urls


def admin(url: str, path: str = "", body: dict[str, Any] | None = None, role: str | None = "admin") -> httpx.Response:
    headers = bearer(KEYS[role]) if role else {}
    method = "POST" if path else "GET"
    return httpx.request(method, f"{url}/v1/admin/deployments{path}", json=body, headers=headers, timeout=120)


def wait_for_view(url: str, field: str, value: str, timeout_s: float = 30) -> dict[str, Any]:
    """The deployment view once its ``field`` reads ``value`` (or the last one seen at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        view: dict[str, Any] = admin(url).json()
        if view[field] == value or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def wait_for_phase(url: str, phase: str, timeout_s: float = 30) -> dict[str, Any]:
    return wait_for_view(url, "phase", phase, timeout_s)


def deploy(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["deploy", *args], env={"FLYWHEEL_API_KEY": KEYS["admin"]})
    return result.exit_code, result.output


def test_two_gateways_follow_one_deployment(
    two_gateways: list[str], registry_with_adapter: tuple[Path, str], kafka_isolated: KafkaSettings
) -> None:
    a, b = two_gateways
    challenger = f"smollm2-135m-instruct+{registry_with_adapter[1]}"
    assert admin(a, role=None).status_code == 401
    assert admin(a, role="analyst").status_code == 403
    assert admin(a, "/promote", role="developer").status_code == 403
    assert admin(a, "/promote").json()["error"]["message"] == "there is no challenger to promote"

    code, output = deploy("challenger", "smollm2-135m-instruct+0000", "--url", a)
    assert code == 1
    assert "model version 'smollm2-135m-instruct+0000' cannot be served" in output
    code, output = deploy("challenger", challenger, "--url", a)
    assert code == 0, output
    view_a, view_b = wait_for_phase(a, "shadow"), wait_for_phase(b, "shadow")
    assert view_a == view_b
    assert view_b["challenger"] == challenger

    # Shadow: the user gets the champion; the challenger's copy is an event with the same id.
    user = bearer(KEYS["user"])
    served = httpx.post(f"{b}/v1/chat/completions", json=CHAT | {"user": "u1"}, headers=user, timeout=120).json()
    events = interaction_events(kafka_isolated, 2)
    by_role = {e.role: e for e in events}
    raw_id = verify_id(served["interaction_id"], SIGNING_KEY)
    assert {e.interaction_id for e in events} == {raw_id}
    assert (by_role["served"].arm, by_role["served"].model_version) == ("champion", "smollm2-135m-instruct")
    assert (by_role["shadow"].arm, by_role["shadow"].model_version, by_role["shadow"].error) == (
        "challenger",
        challenger,
        None,
    )
    assert by_role["served"].completion == served["choices"][0]["message"]["content"]
    assert by_role["shadow"].completion != by_role["served"].completion  # the random adapter answers otherwise
    assert by_role["shadow"].phase == by_role["served"].phase == "shadow"

    # A/B at the last step; a forced arm needs an admin's or a developer's key.
    assert deploy("mode", "ab", "--step", "3", "--url", b)[0] == 0
    assert wait_for_phase(a, "ab-50")["phase"] == "ab-50"
    forced = {"X-Flywheel-Arm": "challenger"}
    refused = httpx.post(f"{a}/v1/chat/completions", json=CHAT, headers=forced | user, timeout=120)
    assert refused.status_code == 403
    answer = httpx.post(
        f"{a}/v1/chat/completions", json=CHAT, headers=forced | bearer(KEYS["developer"]), timeout=120
    ).json()
    assert answer["choices"][0]["message"]["content"] == by_role["shadow"].completion

    assert deploy("promote", "--url", a)[0] == 0
    view_a, view_b = wait_for_phase(a, "champion-only"), wait_for_phase(b, "champion-only")
    assert (view_a["champion"], view_b["champion"], view_b["challenger"]) == (challenger, challenger, None)
    assert view_a["deployment_id"] == view_b["deployment_id"]
