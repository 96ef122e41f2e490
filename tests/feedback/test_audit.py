"""The audit trail's pieces that need no service: outcomes, error messages, the actor of a request."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from starlette.requests import Request

from feedback.audit import actor_of, error_message, note_of, outcome_of


@pytest.mark.parametrize(
    ("status", "outcome"), [(200, "allowed"), (202, "allowed"), (401, "denied"), (429, "denied"), (503, "error")]
)
def test_the_status_decides_the_outcome(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"error": {"message": "the bearer token is not the admin token", "type": "x"}}',
            "the bearer token is not the admin token",
        ),
        (b'{"detail": "query refused: no"}', "query refused: no"),
        (
            b'{"detail": [{"loc": ["query", "since"], "msg": "Input should be a valid datetime"}]}',
            "query.since: Input should be a valid datetime",
        ),
        (b"plain text", "plain text"),
        (b"[1, 2]", None),
    ],
)
def test_error_message_reads_both_error_shapes(body: bytes, message: str | None) -> None:
    assert error_message(body) == message


@dataclass
class Principal:
    key_id: str
    name: str
    role: str


def test_the_actor_is_the_principal_then_the_admin_check_then_anonymous() -> None:
    request = Request({"type": "http", "state": {}})
    assert actor_of(request) == "anonymous"
    note_of(request).actor = "admin"
    assert actor_of(request) == "admin"
    request.state.principal = Principal("k1", "ops-bot", "developer")
    assert actor_of(request) == "ops-bot"
