"""The API key a command sends: ``--key`` or ``FLYWHEEL_API_KEY`` (``flywheel keys create`` makes one)."""

from __future__ import annotations

from typing import Annotated

import typer

KEY_ENV = "FLYWHEEL_API_KEY"

KeyOption = Annotated[
    str | None,
    typer.Option("--key", envvar=KEY_ENV, show_envvar=True, help="API key sent as the bearer token."),
]


def bearer(key: str | None) -> dict[str, str]:
    """The Authorization header for ``key``; none without one (the service then answers 401 saying so)."""
    return {"Authorization": f"Bearer {key}"} if key else {}
