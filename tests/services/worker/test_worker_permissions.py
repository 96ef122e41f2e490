"""The worker's permission matrix on a running worker (real broker, keys on its keys topic, real file).

Every route x every role, no key, a revoked key, malformed headers. A route added without a declared
permission, or missing from ``ROUTES``, fails ``test_every_route_declares_its_permission``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from access_matrix import PRINCIPALS, PUBLIC, declared_permissions, expected_status
from api_keys import Keys, bearer
from fastapi import FastAPI
from pipeline_events import worker_settings_in

from feedback.access import Permission
from feedback.apikeys import new_key, publish_key, revoke
from feedback.settings import KafkaSettings
from services.worker.app import create_app

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
UNKNOWN_VERSION = "0" * 64  # a well-formed adapter version no registry holds
# (method, path) -> (permission, path asked, request body, status when allowed)
ROUTES: dict[tuple[str, str], tuple[Permission | str, str, dict[str, Any] | None, int]] = {
    ("GET", "/healthz"): (PUBLIC, "/healthz", None, 200),
    ("GET", "/metrics"): (PUBLIC, "/metrics", None, 200),
    ("GET", "/v1/summary"): (Permission.REPORTS, "/v1/summary", None, 200),
    ("GET", "/v1/interactions"): (Permission.RAW_TEXT, "/v1/interactions", None, 200),
    ("GET", "/v1/sink/status"): (Permission.OPERATIONS, "/v1/sink/status", None, 200),
    ("POST", "/v1/analytics/query"): (Permission.ANALYTICS, "/v1/analytics/query", {"sql": ""}, 422),
    ("GET", "/v1/reports/{experiment}"): (Permission.REPORTS, "/v1/reports/nope", None, 404),
    ("POST", "/v1/admin/refresh"): (Permission.REFRESH, "/v1/admin/refresh", {"unknown": 1}, 422),
    ("GET", "/v1/refreshes"): (Permission.MODELS, "/v1/refreshes", None, 200),
    ("GET", "/v1/refreshes/{key}"): (Permission.MODELS, "/v1/refreshes/1999-01-01", None, 404),
    ("GET", "/v1/audit"): (Permission.AUDIT, "/v1/audit", None, 200),
    ("GET", "/v1/registry/{version}"): (Permission.MODELS, f"/v1/registry/{UNKNOWN_VERSION}", None, 404),
    ("GET", "/v1/registry/{version}/{name}"): (
        Permission.MODELS,
        f"/v1/registry/{UNKNOWN_VERSION}/adapter_config.json",
        None,
        404,
    ),
    ("GET", "/dashboard"): (PUBLIC, "/dashboard", None, 200),
    ("GET", "/dashboard/static/{name}"): (PUBLIC, "/dashboard/static/style.css", None, 200),
    ("GET", "/v1/dashboard/overview"): (Permission.DASHBOARD, "/v1/dashboard/overview", None, 200),
    ("GET", "/v1/dashboard/experiments/{experiment}"): (
        Permission.DASHBOARD,
        "/v1/dashboard/experiments/a%20b",
        None,
        422,
    ),
    ("GET", "/v1/dashboard/experiments/{experiment}/shadow"): (
        Permission.DASHBOARD,
        "/v1/dashboard/experiments/a%20b/shadow",
        None,
        422,
    ),
    ("GET", "/v1/dashboard/models"): (Permission.DASHBOARD, "/v1/dashboard/models", None, 200),
    ("GET", "/v1/dashboard/refreshes"): (Permission.DASHBOARD, "/v1/dashboard/refreshes", None, 200),
    ("GET", "/v1/dashboard/feedback"): (Permission.DASHBOARD, "/v1/dashboard/feedback", None, 200),
    ("POST", "/v1/dashboard/deployments/{action}"): (
        Permission.DEPLOY_RAMP,
        "/v1/dashboard/deployments/nothing",
        None,
        422,
    ),
}


@pytest.fixture
def worker(
    kafka_isolated: KafkaSettings, api_keys: Keys, tmp_path: Path, serve_app: ServeApp
) -> Iterator[tuple[str, FastAPI, dict[str, dict[str, str]]]]:
    """A running worker, its app, and the headers of every principal of the matrix."""
    gone, record = new_key("gone", "admin", created_by="tests")
    publish_key(kafka_isolated, record)
    publish_key(kafka_isolated, revoke(record))
    headers = {role: bearer(key) for role, key in api_keys.items()} | {
        "no key": {},
        "revoked key": bearer(gone),
        "malformed header": {"Authorization": f"Basic {api_keys['admin']}"},
        "not a key": bearer("sk-" + "a" * 48),
    }
    app = create_app(worker_settings_in(tmp_path, kafka_isolated))
    with serve_app(app) as url:
        yield url, app, headers


def test_every_route_declares_its_permission_and_the_matrix_holds(
    worker: tuple[str, FastAPI, dict[str, dict[str, str]]],
) -> None:
    url, app, headers = worker
    assert declared_permissions(app) == {route: spec[0] for route, spec in ROUTES.items()}
    got, want = {}, {}
    for route, (permission, path, body, allowed) in ROUTES.items():
        for principal in PRINCIPALS:
            response = httpx.request(route[0], f"{url}{path}", json=body, headers=headers[principal], timeout=60)
            got[(*route, principal)] = response.status_code
            want[(*route, principal)] = expected_status(permission, principal, allowed)
            if response.status_code == 401:
                assert response.headers["WWW-Authenticate"] == "Bearer"
    assert got == want


def test_refusals_say_why(worker: tuple[str, FastAPI, dict[str, dict[str, str]]]) -> None:
    url, _, headers = worker
    revoked = httpx.get(f"{url}/v1/summary", headers=headers["revoked key"], timeout=30)
    anonymous = httpx.post(f"{url}/v1/admin/refresh", json={}, timeout=30)
    analyst = httpx.get(f"{url}/v1/interactions", headers=headers["analyst"], timeout=30)
    assert revoked.json() == {"detail": "the API key was revoked"}
    assert anonymous.json() == {"detail": "this endpoint needs an Authorization: Bearer <API key> header"}
    assert analyst.json() == {"detail": "the role 'analyst' may not raw-text; admin may"}
