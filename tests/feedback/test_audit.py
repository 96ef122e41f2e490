"""The audit trail's pieces that need no service: outcomes, error messages, the actor of a request."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from feedback.access import Principal
from feedback.audit import actor_of, error_message, outcome_of


@pytest.mark.parametrize(
    ("status", "outcome"), [(200, "allowed"), (202, "allowed"), (401, "denied"), (429, "denied"), (503, "error")]
)
def test_the_status_decides_the_outcome(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"error": {"message": "the API key is not valid", "type": "x"}}',
            "the API key is not valid",
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


def test_the_actor_is_the_keys_label_else_anonymous() -> None:
    request = Request({"type": "http", "state": {}})
    assert actor_of(request) == "anonymous"
    request.state.principal = Principal("0123456789abcdef", "ops-bot", "developer")
    assert actor_of(request) == "ops-bot (0123456789abcdef)"
