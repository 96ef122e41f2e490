"""``flywheel models list|show|promote|rollback``: adapter versions in the registry, lineage and state.

Reads ``model.registry_dir`` (or ``--registry``). ``promote`` and ``rollback`` act on the current
challenger through a gateway's admin deployment endpoints (as ``flywheel deploy`` does, with an
admin's API key from ``--key`` or ``FLYWHEEL_API_KEY``), after
checking that the VERSION given is that challenger. Registry states follow the deployments topic
(:func:`feedback.registry.follow_deployment`, applied by whoever follows the topic); these commands
also apply the change to the registry themselves at once, so ``models list`` shows it right away,
and a follower applying the same revision later changes nothing.

Exit 1: an unknown version, not the challenger, no challenger, or a change the gateway refused;
exit 2: a bad setting; exit 3: the gateway is unreachable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from feedback.deployments import DeploymentState
from feedback.errors import ConfigError, RegistryError
from feedback.registry import AdapterRegistry, adapter_of, follow_deployment
from feedback.settings import load_settings
from services.cli.credentials import KeyOption
from services.cli.deploy import UrlOption, admin_request

app = typer.Typer(help="Adapter versions in the registry: lineage and state.", no_args_is_help=True)

RegistryOption = Annotated[
    Path | None, typer.Option("--registry", help="registry directory (default: model.registry_dir)")
]
ChallengerArgument = Annotated[
    str | None,
    typer.Argument(
        help="the challenger: its adapter version (the full hash, or at least the 12 characters `models list` "
        "shows) or its full model version (base+adapter); default: whatever the challenger is"
    ),
]
SHORT_VERSION = 12  # characters of a version that `models list` shows, and the shortest accepted prefix


def _registry(path: Path | None) -> AdapterRegistry:
    if path is not None:
        return AdapterRegistry(path)
    try:
        return AdapterRegistry(load_settings().model.registry_dir)
    except ConfigError as exc:
        typer.secho(str(exc), err=True, fg="red")
        raise typer.Exit(2) from exc


@app.command("list")
def list_versions(
    registry: RegistryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="every lineage record as JSON")] = False,
) -> None:
    """List adapter versions, oldest first: version, state, parent, created."""
    records = _registry(registry).versions()
    if as_json:
        typer.echo(json.dumps(records, indent=2, sort_keys=True))
        return
    table = Table("version", "state", "parent", "created")
    for r in records:
        parent = r.get("parent")
        table.add_row(r["version"][:12], r.get("state", "?"), parent[:12] if parent else "-", r.get("created", "?"))
    Console().print(table if records else "no adapter versions yet")


@app.command()
def show(
    version: Annotated[str, typer.Argument(help="an adapter version (its full hash)")],
    registry: RegistryOption = None,
) -> None:
    """Print one version's lineage record as JSON."""
    try:
        record = _registry(registry).lineage(version)
    except RegistryError as exc:
        typer.secho(str(exc), err=True, fg="red")
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(record, indent=2, sort_keys=True))


@app.command()
def promote(
    version: ChallengerArgument = None, url: UrlOption = None, registry: RegistryOption = None, key: KeyOption = None
) -> None:
    """Make the challenger the champion; the old champion retires."""
    _change_challenger("promote", version, url, registry, key)


@app.command()
def rollback(
    version: ChallengerArgument = None, url: UrlOption = None, registry: RegistryOption = None, key: KeyOption = None
) -> None:
    """Remove the challenger (it is rejected); the champion serves alone."""
    _change_challenger("rollback", version, url, registry, key)


def _change_challenger(
    action: Literal["promote", "rollback"],
    version: str | None,
    url: str | None,
    registry_dir: Path | None,
    key: str | None,
) -> None:
    registry = _registry(registry_dir)  # a bad setting stops us before anything changes
    before = _deployment(admin_request("GET", "", url, key))
    if before.challenger is None:
        verb = "promote" if action == "promote" else "roll back"
        typer.secho(f"there is no challenger to {verb}; nothing changed", err=True, fg="red")
        raise typer.Exit(1)
    if version is not None and not _names(version, before.challenger):
        typer.secho(
            f"{version!r} is not the current challenger ({before.challenger}); nothing changed", err=True, fg="red"
        )
        raise typer.Exit(1)
    after = _deployment(admin_request("POST", f"/{action}", url, key))
    if after.revision != before.revision + 1:
        # Another change came between our read and ours, so what we checked may not be what
        # changed; the deployments follower, which sees every revision in order, sets the states.
        typer.secho(
            f"the deployment changed while this ran (read revision {before.revision}, now {after.revision}: "
            f"champion {after.champion}, challenger {after.challenger}); check it with `flywheel deploy show`",
            err=True,
            fg="red",
        )
        raise typer.Exit(1)
    done = "promoted" if action == "promote" else "rolled back"
    typer.echo(f"{done} {before.challenger}; champion {after.champion} (revision {after.revision})")
    for changed, state in follow_deployment(registry, before, after):
        typer.echo(f"registry: {changed} is now {state}")


def _names(version: str, challenger: str) -> bool:
    """Whether ``version`` names ``challenger``: its model version, its adapter version, or a long prefix."""
    adapter = adapter_of(challenger) or ""
    return version == challenger or (len(version) >= SHORT_VERSION and adapter.startswith(version))


def _deployment(view: dict[str, Any]) -> DeploymentState:
    """The state behind a gateway's deployment view (which leaves out only ``updated_at``)."""
    try:
        fields = view if isinstance(view, dict) else {}  # JSON of another shape fails as "Field required"
        return DeploymentState.model_validate({k: v for k, v in fields.items() if k in DeploymentState.model_fields})
    except ValidationError as exc:
        typer.secho(f"the gateway answered with no deployment: {exc.errors()[0]['msg']}", err=True, fg="red")
        raise typer.Exit(1) from exc
