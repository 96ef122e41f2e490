"""Two gateway processes behind the round-robin proxy, on the real broker and the real default model.

The replicas share nothing but Kafka and the adapter registry. A deployment change published
straight onto the compacted deployments topic, and one made through the admin API of whichever
replica the proxy picks, reach both replicas (each one's own API shows it). In the A/B phase every
user's two requests through the proxy land on different replicas (the proxy takes them in turn),
and both get the arm the sticky assignment gives that user: each replica's response counters say
which replica served a request and in which arm, and the exposure events on Kafka agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import Keys, bearer, gateway_process_env, label
from pipeline_events import wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_serving_deployments import CHAT, make_lora
from test_serving_openai import interaction_events

from feedback.assignment import assign
from feedback.deployments import DeploymentState, initial_state, publish_state, set_challenger
from feedback.registry import AdapterRegistry
from feedback.settings import GatewaySettings, KafkaSettings
from services.cli.processes import Service, service_process
from services.proxy.app import create_app
from services.proxy.config import ProxyConfig

ServeApp = Callable[[Any], AbstractContextManager[str]]
REPLICAS = ("a", "b")
CHAMPION = "smollm2-135m-instruct"
PUBLISHER = "integration-test"  # who the change published straight onto the topic names as its author
USERS_PER_ARM = 2


@pytest.fixture
def registry(model_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A registry holding one real LoRA adapter (random weights); the registry and the challenger's version."""
    root = tmp_path / "registry"
    adapter = make_lora(model_dir, tmp_path / "lora", seed=1)  # its answer to CHAT is printable text
    version = AdapterRegistry(root).register(adapter, dataset_manifest={"rows": 0}, lineage={"parent": None})
    return root, f"{CHAMPION}+{version}"


@pytest.fixture
def replicas(
    kafka_isolated: KafkaSettings, api_keys: Keys, registry: tuple[Path, str], tmp_path: Path
) -> Iterator[dict[str, Service]]:
    """Two ``flywheel gateway`` processes, each ready (deployment state and keys read)."""
    with ExitStack() as stack:
        started = {}
        for name in REPLICAS:
            workdir = tmp_path / name
            workdir.mkdir()
            env = gateway_process_env(kafka_isolated, workdir, registry[0])
            started[name] = stack.enter_context(service_process("gateway", workdir, env))
        for service in started.values():
            wait_until(lambda s=service: httpx.get(f"{s.url}/readyz", timeout=10).status_code == 200, 120, "readiness")
        yield started


def deployment(url: str, admin: str) -> dict[str, Any]:
    """The deployment a replica applies, as its admin API shows it."""
    view: dict[str, Any] = httpx.get(f"{url}/v1/admin/deployments", headers=bearer(admin), timeout=30).json()
    return view


def wait_for_revision(replicas: dict[str, Service], admin: str, revision: int) -> dict[str, dict[str, Any]]:
    """Each replica's deployment view once it applied ``revision``."""
    for service in replicas.values():
        wait_until(lambda s=service: deployment(s.url, admin)["revision"] >= revision, 60, f"revision {revision}")
    return {name: deployment(service.url, admin) for name, service in replicas.items()}


def expected_view(state: DeploymentState, **changed: Any) -> dict[str, Any]:
    """The admin API's view of ``state``, with ``changed`` fields."""
    view = state.model_dump(include={"deployment_id", "revision", "champion", "challenger", "mode", "ramp_step"})
    view |= {"ramp": list(state.ramp), "phase": state.phase, "challenger_percent": state.challenger_percent}
    return view | {"shadow_sample_rate": state.shadow_sample_rate, "updated_by": state.updated_by} | changed


def served_by_arm(url: str) -> Counter[str]:
    """A replica's served responses so far, by arm (its Prometheus counters)."""
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "flywheel_responses_total" and sample.labels["role"] == "served":
                counts[sample.labels["arm"]] += int(sample.value)
    return counts


def users_by_arm(deployment_id: str, percent: float) -> dict[str, str]:
    """The first users the sticky assignment puts in each arm: user -> arm."""
    chosen: dict[str, str] = {}
    for n in range(1000):
        user, arm = f"user-{n}", assign(deployment_id, f"user-{n}", percent)
        if sum(1 for a in chosen.values() if a == arm) < USERS_PER_ARM:
            chosen[user] = arm
    return chosen


def chat(proxy: str, key: str, user: str, stream: bool) -> httpx.Response:
    """One short greedy chat completion for ``user`` through the proxy, read whole."""
    body = CHAT | {"user": user, "stream": stream}
    with httpx.stream("POST", f"{proxy}/v1/chat/completions", json=body, headers=bearer(key), timeout=120) as answer:
        answer.read()
    return answer


def serve_through(proxy: str, replicas: dict[str, Service], key: str, user: str, stream: bool) -> tuple[str, str]:
    """Send one request through the proxy; which replica served it, and in which arm (its counters say)."""
    before = {name: served_by_arm(service.url) for name, service in replicas.items()}
    answer = chat(proxy, key, user, stream)
    assert answer.status_code == 200, answer.text
    if stream:
        assert answer.text.rstrip().endswith("data: [DONE]")
    grown: dict[tuple[str, str], int] = {}

    def counted() -> bool:  # a stream's event (and counter) is recorded once its end was sent
        grown.clear()
        for name, service in replicas.items():
            for arm, count in (served_by_arm(service.url) - before[name]).items():
                grown[name, arm] = count
        return sum(grown.values()) == 1

    wait_until(counted, 60, "the served response to be counted")
    [(replica, arm)] = grown
    return replica, arm


def test_two_replicas_behind_the_proxy_agree_on_deployments_and_arms(
    replicas: dict[str, Service],
    registry: tuple[Path, str],
    kafka_isolated: KafkaSettings,
    api_keys: Keys,
    serve_app: ServeApp,
) -> None:
    admin, challenger = api_keys["admin"], registry[1]
    assert {name: deployment(s.url, admin)["revision"] for name, s in replicas.items()} == {"a": 0, "b": 0}

    # A change published straight onto the compacted topic (as the worker's decision engine publishes).
    shadow = set_challenger(initial_state(CHAMPION, GatewaySettings().ramp), challenger, by=PUBLISHER)
    publish_state(kafka_isolated, shadow)
    views = wait_for_revision(replicas, admin, 1)
    assert views == {name: expected_view(shadow) for name in REPLICAS}
    assert views["a"]["phase"] == "shadow"
    assert views["a"]["challenger"] == challenger

    with serve_app(create_app(ProxyConfig(upstreams=tuple(s.url for s in replicas.values())))) as proxy:
        # A change through the admin API of whichever replica the proxy picks; it too goes through the topic.
        changed = httpx.post(
            f"{proxy}/v1/admin/deployments/mode", json={"mode": "ab", "step": 3}, headers=bearer(admin), timeout=120
        )
        assert changed.status_code == 200, changed.text
        ab = shadow.model_copy(update={"mode": "ab", "ramp_step": 3, "revision": 2})
        expected = expected_view(ab, updated_by=label(api_keys, "admin"))
        assert changed.json() == expected
        assert wait_for_revision(replicas, admin, 2) == {name: expected for name in REPLICAS}
        assert expected["phase"] == "ab-50"

        users = users_by_arm(shadow.deployment_id, 50)
        served = {
            user: [serve_through(proxy, replicas, api_keys["user"], user, stream) for stream in (False, True)]
            for user in users
        }

    # Each user's two requests went to different replicas, and both served the user's sticky arm.
    assert {user: {replica for replica, _ in seen} for user, seen in served.items()} == {u: {"a", "b"} for u in users}
    assert {user: [arm for _, arm in seen] for user, seen in served.items()} == {u: [a, a] for u, a in users.items()}
    assert sorted(users.values()) == ["challenger", "challenger", "champion", "champion"]

    # The exposure log agrees: every served event carries the user's arm, its model and the A/B phase.
    events = [e for e in interaction_events(kafka_isolated, 2 * len(users)) if e.role == "served"]
    version = {"champion": CHAMPION, "challenger": challenger}
    assert sorted((e.unit_id, e.arm, e.model_version, e.phase, e.error) for e in events) == sorted(
        (user, arm, version[arm], "ab-50", None) for user, arm in users.items() for _ in range(2)
    )
    assert {e.deployment_id for e in events} == {shadow.deployment_id}
