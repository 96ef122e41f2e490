"""Fuzzing the gateway's and the worker's HTTP APIs from their own OpenAPI schemas (schemathesis).

A live gateway (uvicorn, the real broker, the shipped model with a 4-token answer ceiling so that
every accepted chat is quick) gets up to ``EXAMPLES`` generated requests per operation, valid and
invalid, with an admin's key so that every request reaches its handler; so does a live worker (the
real broker and DuckDB file). Each response must not be a 5xx and must match the schema the
service publishes for its status. Hypothesis runs derandomized: the same requests in every run,
so a failure reproduces.
"""

from __future__ import annotations

import json
import multiprocessing
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from itertools import repeat
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from api_keys import Keys, bearer
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from pipeline_events import worker_settings_in
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.generation import GenerationMode

from feedback.model.runtime import ModelRuntime
from feedback.registry import AdapterRegistry
from feedback.settings import KafkaSettings, Settings
from services.gateway.app import create_app
from services.gateway.backend import TransformersBackend
from services.worker.app import create_app as create_worker

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
EXAMPLES = 1000  # generated requests per operation (fewer where the schema allows fewer distinct ones)
HEAD_LIMIT = 16 * 1024  # bytes of request line and headers the HTTP server (uvicorn's h11) reads at most
CLIENT_PROCESSES = 2  # operations fuzzed at once (CI has 2 cores)
CLIENT_HEADERS = 1024  # more than the headers the client adds itself (User-Agent, Accept, the test case's id)

pytestmark = pytest.mark.kafka


@pytest.fixture
def gateway_url(
    tmp_path: Path, kafka_isolated: KafkaSettings, runtime: ModelRuntime, serve_app: ServeApp
) -> Iterator[str]:
    settings = Settings.model_validate(
        {
            "kafka": kafka_isolated.model_dump(),
            "gateway": {
                "wal": {"dir": tmp_path / "wal"},
                "drain_timeout_s": 10,
                # one key sends everything: its limits are not what this test is about
                "limits": {"rate_per_s": 1e6, "burst": 1_000_000, "max_in_flight": 100_000},
            },
            "security": {"signing_key": "fuzz-signing-key"},
            "model": {"registry_dir": tmp_path / "registry", "max_new_tokens": 4},
        }
    )
    backend = TransformersBackend(runtime, settings.gateway, AdapterRegistry(tmp_path / "registry"))
    with serve_app(create_app(settings, backend=backend)) as url:
        yield url


def fuzz(url: str, headers: dict[str, str]) -> dict[str, int]:
    """Requests sent per operation; fails naming every check that failed (with the request that failed it).

    Operations are fuzzed ``CLIENT_PROCESSES`` at a time, each in a process of its own, so that generating
    requests and checking answers (the client's work) overlaps the service's answering on another core.
    """
    labels = list(operations_of(url))
    with ProcessPoolExecutor(CLIENT_PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(fuzz_in_process, repeat(url), repeat(headers), labels))
    if failures := [f"{label}:\n{error}" for label, _, error in outcomes if error is not None]:
        pytest.fail("\n\n".join(failures), pytrace=False)
    return {label: sent for label, sent, _ in outcomes}


def operations_of(url: str) -> dict[str, Any]:
    """The service's operations by ``METHOD /path``, from its published schema."""
    loaded = schemathesis.openapi.from_url(f"{url}/openapi.json").get_all_operations()
    return {f"{op.method.upper()} {op.path}": op for op in (result.ok() for result in loaded)}


def fuzz_in_process(url: str, headers: dict[str, str], label: str) -> tuple[str, int, str | None]:
    """``(label, requests sent, the failure's traceback or None)``: a failure as text, since not every
    exception hypothesis and schemathesis raise survives pickling back to the test."""
    try:
        return label, fuzz_operation(operations_of(url)[label], url, headers), None
    except Exception:  # every failure is reported, by the test, with its traceback
        return label, 0, traceback.format_exc()


def fuzz_operation(operation: Any, url: str, headers: dict[str, str]) -> int:
    """Valid and invalid requests to one operation; how many were sent."""
    sent = []
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        try:
            response = case.call(base_url=url, headers=headers, timeout=60)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
            # a request head over the server's limit is refused by the HTTP server before the app sees it
            # (uvicorn answers 400 and closes; the client sees a reset while it still writes, or while it reads
            # the answer): not the app's failure
            if head_bytes(case, url, headers) > HEAD_LIMIT - CLIENT_HEADERS:
                sent.append(0)
                return
            raise
        sent.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    run()
    return len(sent)


def head_bytes(case: Any, url: str, headers: dict[str, str]) -> int:
    """The size of the request's line and headers as sent."""
    kwargs = case.as_transport_kwargs(base_url=url, headers=headers)
    prepared = requests.Request(
        kwargs["method"], kwargs["url"], params=kwargs.get("params"), headers=kwargs.get("headers")
    ).prepare()
    return len(prepared.url or "") + sum(len(k) + len(v) + 4 for k, v in prepared.headers.items())


@pytest.fixture
def worker_url(tmp_path: Path, kafka_isolated: KafkaSettings, serve_app: ServeApp, gateway_url: str) -> Iterator[str]:
    """A worker whose dashboard acts through a live gateway (with no challenger, every change is refused)."""
    settings = worker_settings_in(tmp_path / "worker", kafka_isolated, dashboard_gateway_url=gateway_url)
    with serve_app(create_worker(settings)) as url:
        yield url


GATEWAY_OPERATIONS = [
    "GET /healthz",
    "GET /metrics",
    "GET /readyz",
    "GET /v1/admin/deployments",
    "GET /v1/models",
    "POST /v1/admin/deployments/challenger",
    "POST /v1/admin/deployments/mode",
    "POST /v1/admin/deployments/promote",
    "POST /v1/admin/deployments/rollback",
    "POST /v1/chat/completions",
    "POST /v1/feedback",
]
WORKER_OPERATIONS = [
    "GET /healthz",
    "GET /metrics",
    "GET /v1/audit",
    "GET /v1/dashboard/experiments/{experiment}",
    "GET /v1/dashboard/experiments/{experiment}/shadow",
    "GET /v1/dashboard/feedback",
    "GET /v1/dashboard/models",
    "GET /v1/dashboard/overview",
    "GET /v1/dashboard/refreshes",
    "GET /v1/interactions",
    "GET /v1/refreshes",
    "GET /v1/refreshes/{key}",
    "GET /v1/registry/{version}",
    "GET /v1/registry/{version}/{name}",
    "GET /v1/reports/{experiment}",
    "GET /v1/sink/status",
    "GET /v1/summary",
    "POST /v1/admin/refresh",
    "POST /v1/analytics/query",
    "POST /v1/dashboard/deployments/{action}",
]


@pytest.mark.parametrize(
    ("service", "operations", "busiest"),
    [
        ("gateway_url", GATEWAY_OPERATIONS, "POST /v1/chat/completions"),
        ("worker_url", WORKER_OPERATIONS, "POST /v1/analytics/query"),
    ],
)
def test_no_generated_request_gets_a_5xx_or_breaks_the_schema(
    service: str, operations: list[str], busiest: str, api_keys: Keys, request: pytest.FixtureRequest
) -> None:
    sent = fuzz(request.getfixturevalue(service), bearer(api_keys["admin"]))
    print(f"fuzz {service}:", json.dumps(sent, indent=1))
    assert sorted(sent) == operations
    assert sent[busiest] >= EXAMPLES
