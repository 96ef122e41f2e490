"""Challengers on other base models and broken challengers, on the real default model and Kafka.

A second base model is made from the shipped one: a directory under another name whose chat
template gives the assistant another name, so it renders other prompts and answers otherwise.
Deploying a version on it through ``flywheel deploy`` loads it on its own model instance; rolling
back releases it. A deployment from the topic naming a missing base or a corrupt adapter keeps
the champion answering every user, with the challenger's failure in the events and the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import Keys, bearer
from fastapi import FastAPI
from test_serving_deployments import CHAT, KEYS, admin, deploy, gateway_settings, wait_for_phase, wait_for_view
from test_serving_openai import interaction_events

from feedback.deployments import DeploymentState, publish_state
from feedback.model.runtime import ModelRuntime, SamplingParams
from feedback.registry import AdapterRegistry
from feedback.settings import KafkaSettings
from services.gateway.app import create_app
from services.gateway.backend import TransformersBackend

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
CHAMPION = "smollm2-135m-instruct"
PARAMS = SamplingParams(max_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def second_base(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model's weights (linked, not copied) under another name, with another chat template."""
    copy = tmp_path_factory.mktemp("bases") / "smollm2-pierre"
    copy.mkdir()
    for file in model_dir.iterdir():
        if file.name == "chat_template.jinja":
            template = file.read_text(encoding="utf-8")
            renamed = template.replace("named SmolLM, trained by Hugging Face", "named Pierre, who loves Paris")
            assert renamed != template
            (copy / file.name).write_text(renamed, encoding="utf-8")
        elif file.name != "flywheel-manifest.json":  # without the manifest the directory names the model
            (copy / file.name).symlink_to(file)
    return copy


@pytest.fixture
def gateway(
    tmp_path: Path, kafka_isolated: KafkaSettings, api_keys: Keys, runtime: ModelRuntime, serve_app: ServeApp
) -> Iterator[str]:
    KEYS.update(api_keys)  # the keys ``admin`` and ``deploy`` send
    registry = tmp_path / "registry"
    settings = gateway_settings(tmp_path, kafka_isolated, registry, "bases")
    settings.gateway.ramp = [100]
    backend = TransformersBackend(runtime, settings.gateway, AdapterRegistry(registry))
    with serve_app(create_app(settings, backend=backend)) as url:
        yield url


def chat(url: str, user: str) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/chat/completions", json=CHAT | {"user": user}, headers=bearer(KEYS["user"]), timeout=120
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def metric_line(url: str, prefix: str) -> str:
    lines = [line for line in httpx.get(f"{url}/metrics").text.splitlines() if line.startswith(prefix)]
    return "\n".join(lines)


def test_a_challenger_on_another_base_runs_on_its_own_instance(
    gateway: str, second_base: Path, runtime: ModelRuntime, kafka_isolated: KafkaSettings
) -> None:
    question = CHAT["messages"]
    expected = ModelRuntime.load(second_base).generate(question, PARAMS)
    champion = runtime.generate(question, PARAMS)
    assert expected.text != champion.text  # the other template makes another answer
    version = str(second_base)

    code, output = deploy("challenger", version, "--url", gateway)
    assert code == 0, output
    ready = httpx.get(f"{gateway}/readyz").json()
    assert (ready["ready"], ready["challenger"], ready["bases_loaded"], ready["bases_loading"]) == (
        True,
        version,
        [version],
        [],
    )
    assert metric_line(gateway, "flywheel_base_models{") == (
        'flywheel_base_models{state="loading"} 0.0\nflywheel_base_models{state="loaded"} 1.0'
    )

    shadowed = chat(gateway, "u1")
    assert deploy("mode", "ab", "--step", "0", "--url", gateway)[0] == 0
    assert wait_for_phase(gateway, "ab-100")["phase"] == "ab-100"
    answered = chat(gateway, "u2")
    # the shadow copy runs on its own instance, in parallel: it may finish before the served answer
    events = {(e.phase, e.role): e for e in interaction_events(kafka_isolated, 3)}
    served, shadow, ab = events["shadow", "served"], events["shadow", "shadow"], events["ab-100", "served"]

    assert shadowed["choices"][0]["message"]["content"] == champion.text
    assert (served.role, served.model_version, served.completion) == ("served", CHAMPION, champion.text)
    assert (shadow.role, shadow.model_version, shadow.completion, shadow.error) == (
        "shadow",
        version,
        expected.text,
        None,
    )
    assert shadow.prompt_tokens == expected.prompt_tokens != champion.prompt_tokens
    assert answered["choices"][0]["message"]["content"] == expected.text
    assert (ab.arm, ab.phase, ab.model_version, ab.completion, ab.error) == (
        "challenger",
        "ab-100",
        version,
        expected.text,
        None,
    )

    assert deploy("rollback", "--url", gateway)[0] == 0
    ready = httpx.get(f"{gateway}/readyz").json()
    assert (ready["phase"], ready["bases_loaded"]) == ("champion-only", [])  # released


def test_a_broken_challenger_from_the_topic_leaves_every_user_with_the_champion(
    gateway: str, tmp_path: Path, runtime: ModelRuntime, kafka_isolated: KafkaSettings
) -> None:
    champion = runtime.generate(CHAT["messages"], PARAMS)
    missing_base = str(tmp_path / "no-such-model")
    corrupt = "ab" * 32  # an adapter version whose files do not hash to its name
    adapter_dir = tmp_path / "registry" / corrupt
    adapter_dir.mkdir(parents=True)
    for name, content in (
        ("adapter_config.json", "{}"),
        ("adapter_model.safetensors", "not weights"),
        ("dataset_manifest.json", "{}"),
    ):
        (adapter_dir / name).write_text(content, encoding="utf-8")
    registry_error = f"adapter version {corrupt!r} is corrupt: its files hash to"

    answers, errors = [], []
    for revision, challenger in enumerate((missing_base, f"{CHAMPION}+{corrupt}"), start=1):
        state = DeploymentState(
            deployment_id=f"broken-{revision}",
            champion=CHAMPION,
            challenger=challenger,
            mode="ab",
            ramp=(100,),
            revision=revision,
        )
        publish_state(kafka_isolated, state)
        assert wait_for_view(gateway, "challenger", challenger, 60)["phase"] == "ab-100"
        ready = httpx.get(f"{gateway}/readyz")
        assert (ready.status_code, ready.json()["bases_loaded"]) == (200, [])
        answers.append(chat(gateway, f"u{revision}")["choices"][0]["message"]["content"])
        errors.append(challenger)

    first, second = interaction_events(kafka_isolated, 2)
    assert answers == [champion.text, champion.text]
    for event, challenger in zip((first, second), errors, strict=True):
        assert (event.arm, event.role, event.phase, event.model_version, event.completion) == (
            "challenger",
            "served",
            "ab-100",
            CHAMPION,
            champion.text,
        )
        assert event.error is not None
        assert event.error.startswith(f"challenger {challenger} failed (")
        assert event.error.endswith("); the champion answered")
    assert first.error is not None
    assert second.error is not None
    assert f"base model {missing_base!r} is not loaded" in first.error
    assert registry_error in second.error
    assert metric_line(gateway, "flywheel_model_load_failures_total") == "flywheel_model_load_failures_total 2.0"
    assert metric_line(gateway, "flywheel_challenger_fallbacks_total") == (
        'flywheel_challenger_fallbacks_total{reason="error"} 2.0'
    )
    assert admin(gateway).json()["deployment_id"] == "broken-2"
