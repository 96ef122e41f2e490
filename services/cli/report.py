"""``flywheel report EXPERIMENT``: the A/B report as a table, as JSON (``--json``) or as a page (``--html``).

It opens the DuckDB file read-only (``--db``, else ``duckdb.path`` from the settings); while the
worker holds the file, ask the worker instead: ``GET /v1/reports/{experiment}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import duckdb
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from evaluation.errors import EvaluationError
from evaluation.html import render_html
from evaluation.metrics import parse_split
from evaluation.report import build_report, require_arms, to_json
from feedback.errors import ConfigError
from feedback.settings import Settings, load_settings


class ReadOnlyDuckDB:
    """A read-only DuckDB connection with the ``query`` interface the evaluation package uses."""

    def __init__(self, path: Path) -> None:
        self._con = duckdb.connect(str(path), read_only=True)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of ``sql`` as dicts."""
        cursor = self._con.execute(sql, list(params))
        names = [d[0] for d in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        """Close the connection."""
        self._con.close()


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(message, err=True, fg="red")
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise _fail(str(exc), 2) from exc


def _open(db: Path | None, settings: Settings) -> ReadOnlyDuckDB:
    path = db or settings.duckdb.path
    if not path.is_file():
        raise _fail(f"no DuckDB file at {path}; pass --db or set FLYWHEEL_DUCKDB__PATH", 2)
    try:
        return ReadOnlyDuckDB(path)
    except duckdb.Error as exc:
        message = f"cannot open {path} read-only ({exc}); while the worker runs, use GET /v1/reports/EXPERIMENT"
        raise _fail(message, 3) from exc


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, pattern)


def print_table(report: dict[str, Any], console: Console) -> None:
    """The report as rich tables: the verdict, then each phase with its SRM line and metrics."""
    verdict = report["verdict"]
    head = f"[bold]{verdict['action']}[/bold]" + (f" → {verdict['next_phase']}" if verdict["next_phase"] else "")
    console.print(Panel(head + "\n" + "\n".join(verdict["reasons"]), title=f"experiment {report['experiment']}"))
    for ph in report["phases"]:
        srm = ph["srm"]
        if srm:
            bad = srm["p_value"] < srm["threshold"]
            style = "bold white on red" if bad else "green"
            console.print(f"[{style}]SRM {ph['phase']}: units {ph['units']}, p = {srm['p_value']:.4g}[/{style}]")
        if not ph["metrics"]:
            console.print(f"phase {ph['phase']}: units {ph['units']} (no comparison)")
            continue
        table = Table(title=f"phase {ph['phase']} ({ph['days']:.1f} days)")
        for col in ("metric", "champion", "challenger", "lift", "CI (always valid)", "p", "p adj.", "P(win)"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for m in ph["metrics"]:
            rel, seq = m["relative"], m["sequential_relative"]
            ci = f"[{_fmt(seq['ci'][0], '+.2%')}, {_fmt(seq['ci'][1], '+.2%')}]"
            table.add_row(
                m["name"], _fmt(m["champion"]["value"], ".4g"), _fmt(m["challenger"]["value"], ".4g"),
                _fmt(rel["estimate"], "+.2%") if not rel["error"] else rel["error"], ci,
                _fmt(rel["p_value"], ".4f"), _fmt(m["adjusted_p_value"], ".4f"),
                _fmt(m["bayesian"]["chance_to_win"], ".1%"),
            )  # fmt: skip
        console.print(table)
        for line in extra_lines(ph):
            console.print(line)


def extra_lines(ph: dict[str, Any]) -> list[str]:
    """CUPED, Mann-Whitney and the bootstrap of the p95 latency lift, one line each."""
    lines = []
    cuped, mw, boot = ph["cuped"], ph["mann_whitney"], ph["bootstrap_p95"]
    if cuped:
        ci = f"[{_fmt(cuped['ci'][0], '+.2%')}, {_fmt(cuped['ci'][1], '+.2%')}]"
        text = cuped["error"] or f"lift {_fmt(cuped['estimate'], '+.2%')} {ci}, p = {_fmt(cuped['p_value'], '.4f')}"
        lines.append(f"CUPED on the primary metric (pre-period covariate): {text}")
    if mw:
        text = (
            mw["error"] or f"p = {_fmt(mw['p_value'], '.4f')}, P(challenger unit > champion unit) = {mw['effect']:.3f}"
        )
        lines.append(f"Mann-Whitney U on the primary metric ({mw['n_a']}/{mw['n_b']} units): {text}")
    if boot:
        ci = f"[{_fmt(boot['ci'][0], '+.2%')}, {_fmt(boot['ci'][1], '+.2%')}]"
        lines.append(
            f"p95 latency lift {_fmt(boot['estimate'], '+.2%')}, bootstrap CI {ci}"
            if not boot["error"]
            else boot["error"]
        )
    return lines


def report(
    experiment: Annotated[str, typer.Argument(help="the experiment (deployment) id")],
    as_json: Annotated[
        bool, typer.Option("--json", help="every number with inputs, method, alpha and settings")
    ] = False,
    html: Annotated[Path | None, typer.Option("--html", help="write a self-contained HTML page here")] = None,
    db: Annotated[Path | None, typer.Option("--db", help="the DuckDB file (default: duckdb.path)")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="only these metrics (repeatable)")] = None,
    split: Annotated[str | None, typer.Option("--split", help="expected split champion/challenger, e.g. 90/10")] = None,
    alpha: Annotated[
        float | None,
        typer.Option("--alpha", min=0.0001, max=0.5, help="significance level (default: experiment.alpha)"),
    ] = None,
) -> None:
    """The A/B report of an experiment: SRM per phase, every metric, shadow analysis and the verdict."""
    settings = _settings()
    stats = settings.experiment if alpha is None else settings.experiment.model_copy(update={"alpha": alpha})
    store = _open(db, settings)
    try:
        expected = parse_split(split) if split else None
        built = build_report(store, experiment, stats, metrics=metric, split=expected)
        require_arms(built)
    except EvaluationError as exc:
        raise _fail(str(exc), 1) from exc
    finally:
        store.close()
    data = to_json(built)
    if html:
        html.write_text(render_html(data), encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    elif not html:
        print_table(data, Console())
