"""``flywheel deploy ...``: change the deployment through a gateway's admin endpoints.

Every gateway replica applies the change from the deployments topic, so any one of them will do.
The API key comes from ``--key`` or ``FLYWHEEL_API_KEY`` (reading and a challenger in shadow:
developer or admin; A/B steps, promote, rollback: admin); the gateway from ``--url`` or the gateway
settings. A refused change prints the gateway's message and exits 1; an unreachable gateway exits 3.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import httpx
import typer

from feedback.errors import ConfigError
from feedback.settings import load_settings
from services.cli.credentials import KeyOption, bearer

app = typer.Typer(help="Deployments: challenger, mode and ramp step, promote, roll back.", no_args_is_help=True)

UrlOption = Annotated[str | None, typer.Option("--url", help="gateway base URL (default: from gateway settings)")]


def admin_request(
    method: str, path: str, url: str | None, key: str | None, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Call ``/v1/admin/deployments<path>`` on the gateway; return its JSON, or print why not and exit.

    Exit 2: a bad setting; 3: the gateway is unreachable; 1: it refused the change (its message).
    """
    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.secho(str(exc), err=True, fg="red")
        raise typer.Exit(2) from exc
    base = url or f"http://{settings.gateway.host}:{settings.gateway.port}"
    headers = bearer(key)
    try:
        response = httpx.request(method, f"{base}/v1/admin/deployments{path}", json=body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        typer.secho(f"gateway at {base} is not reachable: {exc}", err=True, fg="red")
        raise typer.Exit(3) from exc
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        typer.secho(f"refused ({response.status_code}): {message}", err=True, fg="red")
        raise typer.Exit(1)
    try:
        view: dict[str, Any] = response.json()
    except ValueError as exc:
        typer.secho(f"{base} answered with no JSON; is it a flywheel gateway?", err=True, fg="red")
        raise typer.Exit(1) from exc
    return view


def _call(method: str, path: str, url: str | None, key: str | None, body: dict[str, Any] | None = None) -> None:
    typer.echo(json.dumps(admin_request(method, path, url, key, body), indent=2))


@app.command()
def show(url: UrlOption = None, key: KeyOption = None) -> None:
    """Print the deployment the gateway applies."""
    _call("GET", "", url, key)


@app.command()
def challenger(
    model_version: Annotated[
        str,
        typer.Argument(
            help="base, or base+adapter version; the base is a served model's name or another model source "
            "(a GGUF file or model directory, loaded on its own instance)"
        ),
    ],
    mode: Annotated[Literal["shadow", "ab"], typer.Option(help="enter in shadow or at the first A/B step")] = "shadow",
    sample_rate: Annotated[float, typer.Option(help="share of requests copied in shadow mode")] = 1.0,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Deploy a new challenger."""
    body = {"model_version": model_version, "mode": mode, "shadow_sample_rate": sample_rate}
    _call("POST", "/challenger", url, key, body)


@app.command()
def mode(
    mode: Annotated[Literal["shadow", "ab"], typer.Argument(help="shadow or ab")],
    step: Annotated[int, typer.Option(help="A/B ramp step (index into gateway.ramp)")] = 0,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Switch mode or move up the A/B ramp."""
    _call("POST", "/mode", url, key, {"mode": mode, "step": step})


@app.command()
def promote(url: UrlOption = None, key: KeyOption = None) -> None:
    """Make the challenger the champion."""
    _call("POST", "/promote", url, key)


@app.command()
def rollback(url: UrlOption = None, key: KeyOption = None) -> None:
    """Remove the challenger."""
    _call("POST", "/rollback", url, key)
