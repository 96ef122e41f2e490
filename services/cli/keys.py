"""``flywheel keys create|list|revoke``: API keys on the compacted ``keys`` topic.

These commands write to the topic directly: whoever can reach the broker operates the service,
and this is how the first admin key is made. ``create`` prints the key once on stdout (only the
key, so ``KEY=$(flywheel keys create ...)`` works) and its id on stderr; the topic keeps only its
salted hash. Gateways and the worker follow the topic, so a revoked key is refused everywhere
within a second or two.

Exit codes: 0 done; 1 an unknown key id, or a key already revoked; 2 bad options or settings;
3 Kafka is unreachable.
"""

from __future__ import annotations

import getpass
import json
from typing import Annotated, Any

import typer

from feedback.access import Role
from feedback.apikeys import KeyRecord, new_key, publish_key, read_keys, revoke
from feedback.errors import KafkaUnavailableError
from feedback.settings import Settings
from feedback.topics import ensure_topics

app = typer.Typer(help="API keys and their roles.", no_args_is_help=True)

KAFKA_UNREACHABLE = 3  # exit code when the broker does not answer
NAME_MAX = 100  # longest key name (KeyRecord.name), characters


def register(main: typer.Typer, settings_or_exit: Any, fail: Any) -> None:
    """Add the ``keys`` commands to the main CLI (it passes its settings loader and error helper)."""

    def ready() -> Settings:
        settings: Settings = settings_or_exit()
        try:
            ensure_topics(settings.kafka)  # a key must never land on an auto-created topic without compaction
        except KafkaUnavailableError as exc:
            raise fail(str(exc), KAFKA_UNREACHABLE) from exc
        return settings

    @app.command("create")
    def create(
        name: Annotated[str, typer.Option(help="Who or what holds the key (a person, a service).")],
        role: Annotated[Role, typer.Option(help="admin, developer, analyst or user.")],
    ) -> None:
        """Create a key; print it once (stdout) and its id (stderr)."""
        if not 1 <= len(name) <= NAME_MAX:
            raise fail(f"--name: between 1 and {NAME_MAX} characters (got {len(name)})", 2)
        settings = ready()
        text, record = new_key(name, role, created_by=f"cli:{getpass.getuser()}")
        try:
            publish_key(settings.kafka, record)
        except KafkaUnavailableError as exc:
            raise fail(str(exc), KAFKA_UNREACHABLE) from exc
        typer.echo(text)
        typer.secho(f"key {record.key_id} ({name}, {role}) created; it is shown only now", err=True, fg="green")

    @app.command("list")
    def list_keys(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False) -> None:
        """Every key: id, name, role, created, revoked (never the hash)."""
        settings = ready()
        try:
            records = read_keys(settings.kafka).records()
        except KafkaUnavailableError as exc:
            raise fail(str(exc), KAFKA_UNREACHABLE) from exc
        rows = [_row(r) for r in records]
        if as_json:
            typer.echo("\n".join(json.dumps(row) for row in rows))
            return
        header = f"{'id':<16}  {'name':<24}  {'role':<9}  {'created':<25}  revoked"
        typer.echo("\n".join([header] + [_line(row) for row in rows]))

    @app.command("revoke")
    def revoke_key(key_id: Annotated[str, typer.Argument(help="The key's id (`keys list` shows it).")]) -> None:
        """Revoke a key: every gateway and the worker refuse it within seconds."""
        settings = ready()
        try:
            record = read_keys(settings.kafka).get(key_id)
            if record is None:
                raise fail(f"no key {key_id!r}; `flywheel keys list` shows the keys", 1)
            if record.revoked_at is not None:
                raise fail(f"key {key_id} was already revoked at {record.revoked_at.isoformat()}", 1)
            publish_key(settings.kafka, revoke(record))
        except KafkaUnavailableError as exc:
            raise fail(str(exc), KAFKA_UNREACHABLE) from exc
        typer.echo(f"key {key_id} ({record.name}, {record.role}) revoked")

    main.add_typer(app, name="keys")


def _row(record: KeyRecord) -> dict[str, str | None]:
    revoked = record.revoked_at.isoformat() if record.revoked_at else None
    return {
        "key_id": record.key_id,
        "name": record.name,
        "role": record.role,
        "created_at": record.created_at.isoformat(),
        "created_by": record.created_by,
        "revoked_at": revoked,
    }


def _line(row: dict[str, str | None]) -> str:
    created = (row["created_at"] or "")[:25]
    return f"{row['key_id']:<16}  {row['name']:<24}  {row['role']:<9}  {created:<25}  {row['revoked_at'] or '-'}"
