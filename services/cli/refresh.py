"""``flywheel refresh``: run the daily refresh now, dry-run it, or show the ledger of past refreshes.

The worker runs refreshes (it owns the DuckDB file), so this command asks it over HTTP with an
API key (``--key`` or ``FLYWHEEL_API_KEY``): starting one needs an admin's, the ledger a
developer's or an admin's. ``--now`` starts today's refresh and follows it step by step
until it ends, then prints its outcome; ``--force`` re-runs a date that already ran. ``--dry-run``
prints what would be selected, curated and trained, and changes nothing. Without either it prints
every refresh the ledger records.

Exit codes: 0 the refresh ended deployed, waiting, no-op or dry-run; 1 it was refused, rejected by
the gate, failed, or is refused by the worker (the message says why); 2 bad settings; 3 the worker
is unreachable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import httpx
import typer

from feedback.errors import ConfigError
from feedback.settings import load_settings
from services.cli.credentials import KeyOption, bearer

SUCCESS = ("deployed", "waiting", "superseded", "no-op", "dry-run")
_POLL_S = 2.0  # how often a running refresh is asked for its step


def refresh(
    now: Annotated[bool, typer.Option("--now", help="Start today's refresh now and follow it to its end.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be selected and trained.")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --now: run a date that already ran again.")] = False,
    url: Annotated[str | None, typer.Option("--url", help="The worker's URL (default: worker settings).")] = None,
    key: KeyOption = None,
) -> None:
    """Run the daily refresh now (--now), dry-run it (--dry-run), or list past refreshes."""
    if now and dry_run:
        _exit("--now and --dry-run exclude each other", 2)
    if force and not now:
        _exit("--force only applies to --now", 2)
    try:
        settings = load_settings()
    except ConfigError as exc:
        _exit(str(exc), 2)
    base = url or f"http://{settings.worker.host}:{settings.worker.port}"
    headers = bearer(key)
    if not (now or dry_run):
        typer.echo(json.dumps(_call("GET", f"{base}/v1/refreshes", headers), indent=2))
        return
    body = {"dry_run": dry_run, "force": force}
    started = _call("POST", f"{base}/v1/admin/refresh", headers, body, timeout=600)
    if dry_run:
        _finish(started)
    typer.secho(f"refresh {started['run']} started", err=True)
    outcome = follow_refresh(base, headers, started["key"], lambda stage: typer.secho(f"  {stage} ...", err=True))
    assert outcome is not None  # no timeout: it returns only with an outcome
    _finish(outcome)


def follow_refresh(
    base: str, headers: dict[str, str], key: str, on_stage: Callable[[str], None], timeout_s: float | None = None
) -> dict[str, Any] | None:
    """Ask the worker at ``base`` about the refresh ``key`` until it ends; its outcome, or None after ``timeout_s``.

    ``on_stage`` is called with each new step the refresh enters.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    stage = None
    while deadline is None or time.monotonic() < deadline:
        record = _call("GET", f"{base}/v1/refreshes/{key}", headers)
        running = record.get("running")
        if running is None and record.get("outcome"):
            outcome: dict[str, Any] = record["outcome"]
            return outcome
        if running is not None and running["stage"] != stage:
            stage = running["stage"]
            on_stage(stage)
        time.sleep(_POLL_S)
    return None


def _finish(outcome: dict[str, Any]) -> None:
    typer.echo(json.dumps(outcome, indent=2))
    status = outcome.get("status")
    colour = "green" if status in SUCCESS else "red"
    typer.secho(f"refresh {outcome.get('run')}: {status}: {outcome.get('message')}", err=True, fg=colour)
    raise typer.Exit(0 if status in SUCCESS else 1)


def _call(
    method: str, url: str, headers: dict[str, str], body: dict[str, Any] | None = None, timeout: float = 30
) -> Any:
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        _exit(f"the worker at {url} is not reachable: {exc}", 3)
    if response.status_code >= 400:
        try:
            message = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        _exit(f"refused ({response.status_code}): {message}", 1)
    return response.json()


def _exit(message: str, code: int) -> NoReturn:
    typer.secho(message, err=True, fg="red")
    raise typer.Exit(code)
