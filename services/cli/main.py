"""The ``flywheel`` command line.

flywheel demo [--short]          the whole loop on real parts (Kafka, model, DuckDB)
flywheel kafka up|down|status|logs
flywheel topics create
flywheel model prepare
flywheel gateway [--processes N] serve the OpenAI-compatible API (N processes on one port)
flywheel worker                  run the DuckDB sink and the worker API
flywheel proxy --upstream URL --upstream URL [--port N]   round-robin proxy in front of gateway replicas
flywheel sink status             consumer lag, rows, dead letters, write-ahead log size
flywheel sink run --shard NAME   one more sink process (a shard with its own DuckDB file) in the sink's group
flywheel query "SQL"             analyst SQL over the lake, sandboxed
flywheel refresh [--now|--dry-run] [--force]   the daily refresh now, a dry run, or the ledger
flywheel tune [--dataset --study --parent --trials --minutes]   search the refresh's training settings
flywheel audit [--actor --action --resource --outcome --since --until]   the audit trail (admins)
flywheel keys create|list|revoke API keys and their roles
flywheel config show
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import typer
import uvicorn

from feedback.errors import ConfigError, FlywheelError
from feedback.settings import Settings, load_settings
from services.cli import broker, deploy, keys, models
from services.cli import query as query_cli
from services.cli import sink as sink_cli
from services.cli.audit import audit
from services.cli.ports import port_in_use
from services.cli.refresh import refresh
from services.cli.report import report
from services.cli.tune import tune

app = typer.Typer(help="flywheel: a continuous-learning feedback service for LLMs.", no_args_is_help=True)
kafka_app = typer.Typer(help="The local Kafka broker (infra/kafka).", no_args_is_help=True)
topics_app = typer.Typer(help="The project's Kafka topics.", no_args_is_help=True)
model_app = typer.Typer(help="The base model.", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")
app.command()(report)
app.command()(refresh)
app.command()(tune)
app.command()(audit)
app.add_typer(deploy.app, name="deploy")
app.add_typer(models.app, name="models")


def settings_or_exit() -> Settings:
    """Settings, or a message naming the bad field and exit code 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        typer.secho(str(exc), err=True, fg="red")
        raise typer.Exit(2) from exc


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` in red on stderr; return the Exit to raise."""
    typer.secho(message, err=True, fg="red")
    return typer.Exit(code)


def configure_logging(verbose: bool = False) -> None:
    """Timestamped logs on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kafka", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@kafka_app.command("up")
def kafka_up() -> None:
    """Fetch the jars once, start the local broker, wait until it answers, create the topics."""
    settings = settings_or_exit()
    if broker.run_script("start", settings.kafka.local).returncode != 0:
        raise fail("kafka: the broker did not start (see the log above)")
    _create_topics(settings)


@kafka_app.command("down")
def kafka_down() -> None:
    """Stop the local broker cleanly."""
    settings = settings_or_exit()
    raise typer.Exit(broker.run_script("stop", settings.kafka.local).returncode)


@kafka_app.command("status")
def kafka_status() -> None:
    """Say whether the local broker runs and answers (exit 0), or not (3, or 4 when hung)."""
    settings = settings_or_exit()
    raise typer.Exit(broker.run_script("status", settings.kafka.local).returncode)


@kafka_app.command("logs")
def kafka_logs() -> None:
    """The tail of the broker's log."""
    settings = settings_or_exit()
    raise typer.Exit(broker.run_script("logs", settings.kafka.local).returncode)


@topics_app.command("create")
def topics_create() -> None:
    """Create the project's topics that do not exist yet (partitions and retention from settings)."""
    _create_topics(settings_or_exit())


def _create_topics(settings: Settings) -> None:
    from feedback.topics import ensure_topics

    try:
        created = ensure_topics(settings.kafka)
    except FlywheelError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"topics: created {', '.join(created)}" if created else "topics: all present")


@model_app.command("prepare")
def model_prepare() -> None:
    """Convert the configured model once into the cache, and print its directory."""
    from feedback.model.source import prepare_model

    settings = settings_or_exit()
    try:
        path = prepare_model(settings.model.source, settings.model.cache_dir)
    except FlywheelError as exc:
        raise fail(str(exc)) from exc
    typer.echo(str(path))


@app.command()
def gateway(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: gateway.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default: gateway.port).")] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes serving the port (default: gateway.processes); each has its own engine, or on vLLM"
            " they share one (gateway.vllm.shared_engine).",
        ),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible API with the champion model."""
    settings = settings_or_exit()
    from services.gateway import processes as gateway_processes

    bind_host, bind_port = host or settings.gateway.host, port or settings.gateway.port
    count = processes or settings.gateway.processes
    _check_port(bind_host, bind_port, "FLYWHEEL_GATEWAY__PORT")
    if count > 1:
        configure_logging()
        try:
            served = gateway_processes.serve(settings, bind_host, bind_port, count)
        except FlywheelError as exc:  # the shared engine could not start
            raise fail(str(exc)) from exc
        if not served:
            raise fail("a gateway process (or the engine they share) failed (its error is above); all were stopped")
        return
    try:
        application = gateway_processes.create_single_app(settings)  # holds gateway.wal.dir
    except FlywheelError as exc:
        raise fail(str(exc)) from exc
    _serve(application, bind_host, bind_port, "FLYWHEEL_GATEWAY__PORT")


@app.command()
def worker(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: worker.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default: worker.port).")] = None,
) -> None:
    """Run the sink (Kafka to DuckDB) and the worker's API."""
    from services.worker.app import create_app

    settings = settings_or_exit()
    bind_host, bind_port = host or settings.worker.host, port or settings.worker.port
    _serve(create_app(settings), bind_host, bind_port, "FLYWHEEL_WORKER__PORT")


@app.command()
def proxy(
    upstream: Annotated[
        list[str], typer.Option("--upstream", help="A gateway replica's base URL (http://host:port); repeat it.")
    ],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8080,
) -> None:
    """Spread requests over gateway replicas in turn, streaming answers through (services/proxy)."""
    from pydantic import ValidationError

    from services.proxy.app import create_app
    from services.proxy.config import ProxyConfig

    try:
        config = ProxyConfig(upstreams=tuple(upstream))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise fail(f"proxy.{where}: {error['msg'].removeprefix('Value error, ')}", code=2) from exc
    # proxy_headers off: the client address the proxy appends to X-Forwarded-For is the connection's own
    _serve(create_app(config), host, port, None, proxy_headers=False)


def _serve(application: object, host: str, port: int, port_setting: str | None, **server: Any) -> None:
    _check_port(host, port, port_setting)
    configure_logging()
    try:
        uvicorn.run(application, host=host, port=port, log_level="info", **server)  # type: ignore[arg-type]
    except FlywheelError as exc:
        raise fail(str(exc)) from exc


def _check_port(host: str, port: int, port_setting: str | None) -> None:
    if port_in_use(host, port):
        alternative = f" or {port_setting}" if port_setting else ""
        raise fail(f"port {port} on {host} is already in use; choose another with --port{alternative}")


@app.command()
def demo(
    short: Annotated[bool, typer.Option("--short", help="Two requests and small answers (CI runs this).")] = False,
) -> None:
    """The main job: start Kafka, worker and gateway, send real requests and feedback, show DuckDB."""
    from services.cli.demo import run_demo

    configure_logging()
    raise typer.Exit(run_demo(settings_or_exit(), short=short))


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings as JSON (secrets masked)."""
    settings = settings_or_exit()
    data = settings.model_dump(mode="json")
    data["security"]["signing_key"] = "***"
    typer.echo(json.dumps(data, indent=2))


sink_cli.register(app, settings_or_exit, fail)
query_cli.register(app, settings_or_exit, fail)
keys.register(app, settings_or_exit, fail)

if __name__ == "__main__":
    app()
