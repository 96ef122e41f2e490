"""``flywheel models list|show``: the adapter versions in the registry, with lineage and state.

Reads ``model.registry_dir`` (or ``--registry``). Exit 1 names an unknown version; exit 2 a bad
setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from feedback.errors import ConfigError, RegistryError
from feedback.registry import AdapterRegistry
from feedback.settings import load_settings

app = typer.Typer(help="Adapter versions in the registry: lineage and state.", no_args_is_help=True)

RegistryOption = Annotated[
    Path | None, typer.Option("--registry", help="registry directory (default: model.registry_dir)")
]


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
