"""``flywheel audit``: the audit trail, newest first, as a table (or JSON lines).

The worker owns the DuckDB file, so this asks its ``GET /v1/audit`` with an admin's API key
(``--key`` or ``FLYWHEEL_API_KEY``). Exit codes: 0 ok, 1 the worker refused the request (its message),
2 bad settings, 3 the worker is unreachable.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, NoReturn

import httpx
import pyarrow as pa
import typer

from feedback.audit import error_message
from feedback.errors import ConfigError
from feedback.settings import load_settings
from services.cli.credentials import KeyOption, bearer
from services.cli.query import render_table

COLUMNS = ("ts", "actor", "action", "resource", "outcome", "reason", "details")


def audit(
    actor: Annotated[str | None, typer.Option(help="Only this principal (admin, decision-engine, ...).")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action; a trailing * matches a prefix.")] = None,
    resource: Annotated[str | None, typer.Option(help="Only this resource (an interaction id, ...).")] = None,
    outcome: Annotated[str | None, typer.Option(help="allowed, denied or error.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time on (UTC unless a zone is given).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Before this time.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most rows (at most audit.query_max_rows).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per row.")] = False,
    url: Annotated[str | None, typer.Option("--url", help="The worker's URL (default: worker settings).")] = None,
    key: KeyOption = None,
) -> None:
    """Print the audit trail (admins only): who did what, when, to what, and why."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        _exit(str(exc), 2)
    base = url or f"http://{settings.worker.host}:{settings.worker.port}"
    wanted = {"actor": actor, "action": action, "resource": resource, "outcome": outcome, "limit": limit}
    wanted |= {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None}
    params = {key: value for key, value in wanted.items() if value is not None}
    try:
        response = httpx.get(f"{base}/v1/audit", params=params, headers=bearer(key), timeout=60)
    except httpx.HTTPError as exc:
        _exit(f"the worker at {base} did not answer: {exc}", 3)
    if response.status_code != 200:
        _exit(f"refused ({response.status_code}): {error_message(response.content) or response.text}", 1)
    rows: list[dict[str, Any]] = response.json()
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    cells = [{c: json.dumps(row[c]) if c == "details" else row[c] for c in COLUMNS} for row in rows]
    typer.echo(render_table(pa.Table.from_pylist(cells, schema=pa.schema([(c, pa.string()) for c in COLUMNS]))))


def _exit(message: str, code: int) -> NoReturn:
    typer.secho(message, err=True, fg="red")
    raise typer.Exit(code)
