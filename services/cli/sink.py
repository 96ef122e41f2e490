"""``flywheel sink status``: the sink's lag, rows and dead letters, and the local write-ahead log;
``flywheel sink run --shard NAME``: one more sink process in the sink's consumer group.

The worker owns its DuckDB file, and no other process may open it while the worker runs, so the
status is read through the worker's HTTP API (``GET /v1/sink/status``). The write-ahead log size
is read from a local gateway's log directory without opening the log. It needs a developer's or
an admin's API key (``--key`` or ``FLYWHEEL_API_KEY``); a refused key exits 1.

A sink shard (``services.worker.shard``) writes a DuckDB file of its own and exports into the
shared lake; it runs until SIGTERM or SIGINT, then exports what it stored, commits the offsets
to Kafka and leaves the group, so another shard takes its partitions where it stopped.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError

from feedback.errors import FlywheelError
from feedback.settings import Settings, WorkerSettings
from feedback.wal import disk_usage
from services.cli.credentials import KeyOption, bearer

app = typer.Typer(help="The sink (Kafka to DuckDB).", no_args_is_help=True)

WORKER_UNREACHABLE = 3  # exit code when the worker does not answer


class Refused(Exception):
    """The worker refused the request (the key is missing, invalid or of a role without ``operations``)."""


def fetch_status(worker_url: str, key: str | None = None) -> dict[str, Any]:
    """The worker's sink status; raises Refused on a 401/403, httpx.HTTPError when it does not answer."""
    response = httpx.get(f"{worker_url.rstrip('/')}/v1/sink/status", headers=bearer(key), timeout=30)
    if response.status_code in (401, 403):
        raise Refused(f"refused ({response.status_code}): {response.json().get('detail')}")
    response.raise_for_status()
    status: dict[str, Any] = response.json()
    return status


def render(status: dict[str, Any], wal_dir: Path, wal_max_bytes: int) -> str:
    """The status as a short human-readable report."""
    lines = [f"{'topic':<32} {'partition':>9} {'committed':>10} {'end':>10} {'lag':>8}"]
    for p in status["partitions"]:
        cells = [str(p[k]) if p[k] is not None else "-" for k in ("committed", "end", "lag")]
        lines.append(f"{p['topic']:<32} {p['partition']:>9} {cells[0]:>10} {cells[1]:>10} {cells[2]:>8}")
    lag = status["total_lag"]
    lines.append(f"total lag: {lag if lag is not None else 'unknown (' + str(status['kafka_error']) + ')'}")
    lines.append("rows: " + ", ".join(f"{name} {count}" for name, count in status["rows"].items()))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(status["dead_letter_reasons"].items())) or "none"
    lines.append(f"dead-lettered: {status['dead_lettered']} (since the worker started: {reasons})")
    lines.append(f"last commit: {status['last_commit'] or 'never'}")
    size, segments = disk_usage(wal_dir)
    lines.append(f"write-ahead log {wal_dir}: {size} bytes in {segments} segments ({size / wal_max_bytes:.1%} of max)")
    return "\n".join(lines)


def register(main: typer.Typer, settings_or_exit: Any, fail: Any) -> None:
    """Add the ``sink`` commands to the main CLI (it passes its settings loader and error helper)."""

    @app.command("status")
    def status(
        worker_url: Annotated[
            str | None, typer.Option("--worker", help="The worker's URL (default: worker.host and worker.port).")
        ] = None,
        wal_dir: Annotated[
            Path | None, typer.Option(help="A local gateway's log dir (default: gateway.wal.dir).")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
        key: KeyOption = None,
    ) -> None:
        """Consumer lag per partition, rows ingested, dead letters, last commit, write-ahead log size."""
        settings: Settings = settings_or_exit()
        url = worker_url or f"http://{settings.worker.host}:{settings.worker.port}"
        directory = wal_dir or settings.gateway.wal.dir
        try:
            data = fetch_status(url, key)
        except Refused as exc:
            raise fail(str(exc), 1) from exc
        except httpx.HTTPError as exc:
            raise fail(
                f"the worker at {url} did not answer ({exc}); is `flywheel worker` running?", WORKER_UNREACHABLE
            ) from exc
        if as_json:
            size, segments = disk_usage(directory)
            typer.echo(
                json.dumps(data | {"wal": {"dir": str(directory), "bytes": size, "segments": segments}}, indent=2)
            )
        else:
            typer.echo(render(data, directory, settings.gateway.wal.max_bytes))

    @app.command("run")
    def run(
        shard: Annotated[
            str | None, typer.Option(help="This shard's name, unique in the group (default: worker.sink_shard).")
        ] = None,
        db: Annotated[
            Path | None, typer.Option(help="Its DuckDB file (default: duckdb.path with the shard's name added).")
        ] = None,
        progress_s: Annotated[float, typer.Option(help="Log the shard's counts this often, seconds.")] = 60.0,
    ) -> None:
        """Run one sink shard (sink, lake export, retention) beside the worker, until SIGTERM or SIGINT."""
        from services.cli.main import configure_logging
        from services.worker.shard import run_shard, shard_db_path

        settings: Settings = settings_or_exit()
        name = shard or settings.worker.sink_shard
        if not name:
            raise fail("a sink beside the worker is one shard of several: name it with --shard", 2)
        try:
            worker = WorkerSettings.model_validate(settings.worker.model_dump() | {"sink_shard": name})
        except ValidationError as exc:
            raise fail(f"--shard: {exc.errors()[0]['msg']} (lowercase letters, digits, - and _)", 2) from exc
        settings = settings.model_copy(update={"worker": worker})
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        configure_logging()
        try:
            run_shard(settings, db or shard_db_path(settings), stop, progress_s)
        except FlywheelError as exc:
            raise fail(str(exc)) from exc

    main.add_typer(app, name="sink")
