"""``flywheel query "SQL"``: analyst SQL over the lake, in the sandbox (feedback.sandbox).

Output as a table (default), CSV, JSON lines or a Parquet file. It needs an API key whose role may
run analytics (``--key`` or ``FLYWHEEL_API_KEY``; analyst, developer or admin), checked against the
keys topic; the raw-text views need an admin's. Exit codes: 0 ok, 1 the query failed (or Kafka is
unreachable, so the key cannot be checked), 2 bad usage, 3 refused (the key too), 4 timed out.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.parquet as pq
import typer

from feedback.access import AUTH_OFF, Permission, Principal
from feedback.apikeys import read_keys
from feedback.errors import (
    AccessError,
    KafkaUnavailableError,
    NotAuthenticated,
    QueryFailed,
    QueryRefused,
    QueryTimeout,
)
from feedback.sandbox import QueryLimits, run_query
from feedback.settings import Settings
from services.cli.credentials import KEY_ENV, KeyOption

EXIT_CODES: dict[type[Exception], int] = {QueryRefused: 3, QueryTimeout: 4, QueryFailed: 1}


class Format(StrEnum):
    """How the rows are printed."""

    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def analyst(key: str | None, settings: Settings) -> Principal:
    """The principal of ``key`` if it may run analytics (AccessError, KafkaUnavailableError otherwise)."""
    if settings.security.auth == "off":
        return AUTH_OFF
    if not key:
        raise NotAuthenticated(f"flywheel query needs an API key: --key or {KEY_ENV}")
    return read_keys(settings.kafka).authenticate(key).require(Permission.ANALYTICS)


def render_table(table: pa.Table) -> str:
    """Rows as aligned text columns."""
    rows = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(name)] + [len(r[i]) for r in rows]) for i, name in enumerate(table.column_names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(table.column_names, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = "NULL" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def render_csv(table: pa.Table) -> str:
    """Rows as CSV with a header."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(table.column_names)
    writer.writerows([list(row.values()) for row in table.to_pylist()])
    return out.getvalue().rstrip("\n")


def render_json_lines(table: pa.Table) -> str:
    """One JSON object per row."""
    return "\n".join(json.dumps(row, default=str) for row in table.to_pylist())


def register(main: typer.Typer, settings_or_exit: Any, fail: Any) -> None:
    """Add ``query`` to the main CLI (it passes its settings loader and error helper)."""

    @main.command("query")
    def query(
        sql: Annotated[
            str, typer.Argument(help="One SELECT over interactions, feedback (audit and *_raw for admins).")
        ],
        fmt: Annotated[Format, typer.Option("--format", help="table, csv, json (lines) or parquet.")] = Format.table,
        output: Annotated[Path | None, typer.Option(help="Write here instead of stdout (needed for parquet).")] = None,
        key: KeyOption = None,
        max_rows: Annotated[int | None, typer.Option(min=1, help="Row limit (default: worker.query_max_rows).")] = None,
    ) -> None:
        """Run analyst SQL in the sandbox over the lake (PII-redacted views; raw ones for admins)."""
        settings: Settings = settings_or_exit()
        if fmt is Format.parquet and output is None:
            raise fail("--format parquet needs --output FILE", 2)
        try:
            who = analyst(key, settings)
        except AccessError as exc:
            raise fail(str(exc), 3) from exc
        except KafkaUnavailableError as exc:
            raise fail(f"the API key cannot be checked: {exc}", 1) from exc
        worker = settings.worker
        limits = QueryLimits(worker.query_timeout_s, worker.query_memory_limit, max_rows or worker.query_max_rows)
        try:
            result = run_query(sql, worker.lake_dir, admin=who.can(Permission.RAW_TEXT), limits=limits)
        except (QueryRefused, QueryTimeout, QueryFailed) as exc:
            raise fail(
                f"query {type(exc).__name__.removeprefix('Query').lower()}: {exc}", EXIT_CODES[type(exc)]
            ) from exc
        if fmt is Format.parquet:
            assert output is not None
            pq.write_table(result.table, output)
        else:
            renderers: dict[Format, Callable[[pa.Table], str]] = {
                Format.table: render_table,
                Format.csv: render_csv,
                Format.json: render_json_lines,
            }
            text = renderers[fmt](result.table)
            if output is None:
                typer.echo(text)
            else:
                output.write_text(text + "\n")
        if result.truncated:
            typer.secho(f"(cut at {limits.max_rows} rows; raise --max-rows to see more)", err=True, fg="yellow")
