"""The gateway's permission matrix: every route x every role, no key, a revoked key, malformed headers.

A route added without a declared permission, or missing from ``ROUTES``, fails
``test_every_route_declares_its_permission``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from access_matrix import PRINCIPALS, PUBLIC, declared_permissions, expected_status, plain_dependencies
from api_keys import bearer, seeded_book
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from test_api import CHAT, SIGNING_KEY, make_settings

from feedback.access import Permission
from feedback.apikeys import new_key, revoke
from feedback.ids import new_id
from feedback.signing import sign_id
from services.gateway.app import create_app

SIGNED = sign_id(new_id(), SIGNING_KEY)
# (method, path) -> (permission, request body, status when allowed)
ROUTES: dict[tuple[str, str], tuple[Permission | str, dict[str, Any] | None, int]] = {
    ("POST", "/v1/chat/completions"): (Permission.CHAT, CHAT, 200),
    ("GET", "/v1/models"): (Permission.CHAT, None, 200),
    ("POST", "/v1/feedback"): (
        Permission.FEEDBACK,
        {"interaction_id": SIGNED, "feedback_id": "f1", "thumb": "up"},
        202,
    ),
    ("GET", "/v1/admin/deployments"): (Permission.MODELS, None, 200),
    ("POST", "/v1/admin/deployments/challenger"): (Permission.DEPLOY_SHADOW, {}, 400),  # allowed: then the body
    ("POST", "/v1/admin/deployments/mode"): (Permission.DEPLOY_RAMP, {"mode": "ab"}, 409),  # no challenger
    ("POST", "/v1/admin/deployments/promote"): (Permission.DEPLOY_RAMP, None, 409),
    ("POST", "/v1/admin/deployments/rollback"): (Permission.DEPLOY_RAMP, None, 409),
    ("GET", "/healthz"): (PUBLIC, None, 200),
    ("GET", "/readyz"): (PUBLIC, None, 200),
    ("GET", "/metrics"): (PUBLIC, None, 200),
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    """A gateway and the headers of every principal of the matrix."""
    book, keys, _ = seeded_book()
    gone, record = new_key("gone", "admin", created_by="tests")
    book.put(revoke(record))
    headers = {role: bearer(key) for role, key in keys.items()} | {
        "no key": {},
        "revoked key": bearer(gone),
        "malformed header": {"Authorization": f"Basic {keys['admin']}"},
        "not a key": bearer("sk-" + "a" * 48),
    }
    app = create_app(make_settings(tmp_path_factory.mktemp("gw")), backend=FakeBackend(), keys=book)
    with TestClient(app) as client:
        yield client, headers


def test_every_route_declares_its_permission(gateway: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, _ = gateway
    assert declared_permissions(client.app) == {route: spec[0] for route, spec in ROUTES.items()}  # type: ignore[arg-type]


def test_no_route_runs_a_dependency_in_the_thread_pool(gateway: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, _ = gateway
    assert plain_dependencies(client.app) == []  # type: ignore[arg-type]


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("route", list(ROUTES), ids=" ".join)
def test_permission_matrix(
    gateway: tuple[TestClient, dict[str, dict[str, str]]], route: tuple[str, str], principal: str
) -> None:
    client, headers = gateway
    permission, body, allowed = ROUTES[route]
    response = client.request(*route, json=body, headers=headers[principal])
    expected = expected_status(permission, principal, allowed)
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "authentication_error"
    if expected == 403:
        assert response.json()["error"]["type"] == "permission_error"


@pytest.mark.parametrize(
    ("principal", "message"),
    [
        ("no key", "this endpoint needs an Authorization: Bearer <API key> header"),
        ("revoked key", "the API key was revoked"),
        ("malformed header", "the Authorization header must read Bearer <API key>"),
        ("not a key", "the bearer token is not a flywheel API key (fwk_<id>_<secret>)"),
    ],
)
def test_a_401_says_what_is_wrong_with_the_key(
    gateway: tuple[TestClient, dict[str, dict[str, str]]], principal: str, message: str
) -> None:
    client, headers = gateway
    response = client.post("/v1/chat/completions", json=CHAT, headers=headers[principal])
    assert response.status_code == 401
    assert response.json() == {
        "error": {"message": message, "type": "authentication_error", "param": None, "code": None}
    }


def test_a_403_names_the_role_and_who_may(gateway: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, headers = gateway
    response = client.post("/v1/chat/completions", json=CHAT, headers=headers["analyst"])
    assert response.json() == {
        "error": {
            "message": "the role 'analyst' may not chat; admin or developer or user may",
            "type": "permission_error",
            "param": None,
            "code": None,
        }
    }


def test_auth_off_is_explicit_and_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path)
    settings.security.auth = "off"
    with TestClient(create_app(settings, backend=FakeBackend())) as client:
        chat = client.post("/v1/chat/completions", json=CHAT)
        health = client.get("/healthz")
    assert chat.status_code == 200
    assert chat.headers["X-Flywheel-Auth"] == "off"
    assert health.json()["auth"] == "off"
    assert "gateway: AUTHENTICATION IS OFF" in caplog.text


def test_auth_is_on_and_unmarked_by_default(gateway: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, _ = gateway
    health = client.get("/healthz")
    assert health.json()["auth"] == "keys"
    assert "X-Flywheel-Auth" not in health.headers
