"""A study's report: best settings, each parameter's importance, every trial, as data and as a page.

Importance is fANOVA's (Optuna's default evaluator, seeded): the share of the held-out loss's
variance over completed trials that each parameter explains. The refinement draws from a narrower
box than the coarse stage, so the trials are re-expressed over the full ranges before it is
computed. With fewer than two completed trials there is nothing to apportion: the report carries an
``importance_error`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial

from evaluation.html import STYLE, _scale
from evaluation.tuning.space import Box, distribution
from evaluation.tuning.stopping import STAGE, STOPPED

NOT_ENOUGH = "fewer than two completed trials with varying parameters: no importance to compute"
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def summarize(study: optuna.Study, full: Box, seed: int = 0) -> dict[str, Any]:
    """The study as JSON-ready data: best trial, importances, trials and why it stopped."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in STATE_NAMES]
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(completed, key=lambda t: (t.value, t.number)) if completed else None
    importance, error = importances(study, full, seed)
    return {
        "study": study.study_name,
        "dataset": study.user_attrs.get("dataset"),
        "best": None if best is None else {"trial": best.number, "value": best.value, "params": best.params},
        "importance": importance,
        "importance_error": error,
        "stopped": study.user_attrs.get(STOPPED),
        "trials": [_row(t) for t in trials],
    }


def importances(study: optuna.Study, full: Box, seed: int = 0) -> tuple[dict[str, float], str | None]:
    """fANOVA importance of each varying parameter over the full ranges, or an error message."""
    varying = {name: distribution(name, *span) for name, span in full.items() if span[0] < span[1]}
    rows = [
        create_trial(params={n: t.params[n] for n in varying}, distributions=varying, value=t.value)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if varying.keys() <= t.params.keys()
    ]
    if len(rows) < 2 or not varying or len({tuple(r.params.values()) for r in rows}) < 2:
        return {}, NOT_ENOUGH
    flat = optuna.create_study(direction="minimize")
    flat.add_trials(rows)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    found = optuna.importance.get_param_importances(flat, evaluator=evaluator)
    return {name: round(float(share), 6) for name, share in found.items()}, None


def render_html(summary: dict[str, Any]) -> str:
    """A self-contained page: best settings, importances, the trials' plot and table."""
    best = summary["best"]
    body = [f"<h1>Study {escape(summary['study'])}</h1>", f"<p>Dataset: {escape(str(summary['dataset']))}</p>"]
    if best is None:
        body.append("<p>No trial completed yet.</p>")
    else:
        body.append(f"<h2>Best: trial {best['trial']}, held-out loss {best['value']:.5f}</h2>")
        body.append(_table(("parameter", "value"), [(k, _fmt(v)) for k, v in best["params"].items()]))
    if summary["stopped"]:
        body.append(f"<p>Stopped: {escape(summary['stopped'])}</p>")
    body.append("<h2>Importance (fANOVA)</h2>")
    shares = [(str(k), f"{v:.1%}") for k, v in summary["importance"].items()]
    missing = f"<p>{escape(str(summary['importance_error']))}</p>"
    body.append(_table(("parameter", "share of variance"), shares) if shares else missing)
    body += ["<h2>Trials</h2>", trials_plot(summary["trials"])]
    names = sorted({k for row in summary["trials"] for k in row["params"]})
    rows = [
        (str(r["trial"]), r["stage"] or "", r["state"], _fmt(r["value"]), *(_fmt(r["params"].get(n)) for n in names))
        for r in summary["trials"]
    ]
    body.append(_table(("trial", "stage", "state", "held-out loss", *names), rows))
    head = f'<meta charset="utf-8"><title>study {escape(summary["study"])}</title><style>{STYLE}</style>'
    return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>"


def trials_plot(trials: list[dict[str, Any]]) -> str:
    """Each completed trial's held-out loss (coarse grey, refinement blue), the best so far as a line."""
    done = [r for r in trials if r["value"] is not None and math.isfinite(r["value"])]
    if not done:
        return "<p>No completed trial to plot.</p>"
    values = [r["value"] for r in done]
    x = _scale(0, max(r["trial"] for r in trials) or 1, 600, 40)
    y = _scale(max(values), min(values), 240, 20)  # screen y grows downward: the lowest loss on top
    parts = ['<svg width="600" height="240" role="img"><title>held-out loss per trial</title>']
    for r in done:
        colour = "#248" if r["stage"] == "refine" else "#999"
        parts.append(f'<circle cx="{x(r["trial"]):.1f}" cy="{y(r["value"]):.1f}" r="4" fill="{colour}"/>')
    running, line = math.inf, []
    for r in done:
        running = min(running, r["value"])
        line.append(f"{x(r['trial']):.1f},{y(running):.1f}")
    parts.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="#c40" stroke-width="2"/>')
    parts.append(f'<text x="2" y="14" font-size="10">{min(values):.4f}</text>')
    parts.append(f'<text x="2" y="236" font-size="10">{max(values):.4f}</text></svg>')
    return "".join(parts)


def _row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    seconds = trial.duration.total_seconds() if trial.duration else None
    return {
        "trial": trial.number,
        "stage": trial.user_attrs.get(STAGE),
        "state": STATE_NAMES[trial.state],
        "value": trial.value,
        "params": dict(trial.params),
        "seconds": None if seconds is None else round(seconds, 3),
        "pruned_at": trial.last_step if trial.state == TrialState.PRUNED else None,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"
