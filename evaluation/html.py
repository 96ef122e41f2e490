"""A self-contained HTML page of a report: tables and inline SVG plots, no scripts, no external files.

Plots: relative lift with its fixed and always-valid intervals per metric (latest A/B phase),
cumulative lift of the primary metric over time with its always-valid band, and the traffic
split per phase (observed challenger share against the expected one).
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
.srm{background:#fdd;border:2px solid #c00;padding:8px;font-weight:bold}.ok{color:#070}.bad{color:#c00}
.verdict{font-size:1.3em;padding:8px;border:2px solid #444;display:inline-block}svg{background:#fafafa}"""


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.2%}"


def _scale(lo: float, hi: float, width: float, pad: float) -> Any:
    span = (hi - lo) or 1.0
    return lambda v: pad + (v - lo) / span * (width - 2 * pad)


def lift_plot(metrics: list[dict[str, Any]]) -> str:
    """Forest plot: each metric's relative lift, fixed CI (thick) and always-valid CI (thin)."""
    rows = [m for m in metrics if m["relative"]["error"] is None]
    if not rows:
        return "<p>No lift to plot.</p>"
    ends = [v for m in rows for v in (*m["relative"]["ci"], *m["sequential_relative"]["ci"]) if v is not None]
    lo, hi = min([*ends, 0.0]), max([*ends, 0.0])
    x, height = _scale(lo, hi, 600, 170), 30 * len(rows) + 30
    parts = [f'<svg width="600" height="{height}" role="img"><title>relative lift per metric</title>']
    parts.append(f'<line x1="{x(0):.1f}" y1="0" x2="{x(0):.1f}" y2="{height}" stroke="#999" stroke-dasharray="4"/>')
    for i, m in enumerate(rows):
        y = 25 + 30 * i
        seq = [v if v is not None else (hi if k else lo) for k, v in enumerate(m["sequential_relative"]["ci"])]
        fixed = [v if v is not None else (hi if k else lo) for k, v in enumerate(m["relative"]["ci"])]
        parts.append(f'<text x="5" y="{y + 4}" font-size="12">{escape(m["name"])}</text>')
        parts.append(
            f'<line x1="{x(seq[0]):.1f}" y1="{y}" x2="{x(seq[1]):.1f}" y2="{y}" stroke="#88a" stroke-width="2"/>'
        )
        parts.append(
            f'<line x1="{x(fixed[0]):.1f}" y1="{y}" x2="{x(fixed[1]):.1f}" y2="{y}" stroke="#225" stroke-width="5"/>'
        )
        parts.append(f'<circle cx="{x(m["relative"]["estimate"]):.1f}" cy="{y}" r="4" fill="#c40"/>')
    parts.append(f'<text x="{x(lo):.1f}" y="{height - 4}" font-size="10">{_pct(lo)}</text>')
    parts.append(f'<text x="{x(hi) - 40:.1f}" y="{height - 4}" font-size="10">{_pct(hi)}</text></svg>')
    return "".join(parts)


def timeline_plot(points: list[dict[str, Any]]) -> str:
    """Cumulative lift over days with the always-valid band."""
    points = [p for p in points if p["error"] is None]
    if len(points) < 2:
        return "<p>Not enough days for a timeline.</p>"
    values = [v for p in points for v in (p["lift"], *p["ci"]) if v is not None]
    y_lo, y_hi = min([*values, 0.0]), max([*values, 0.0])
    x = _scale(0, len(points) - 1, 600, 40)
    y = _scale(y_hi, y_lo, 240, 20)  # screen y grows downward
    band = [f"{x(i):.1f},{y(p['ci'][1]):.1f}" for i, p in enumerate(points)]
    band += [f"{x(i):.1f},{y(p['ci'][0]):.1f}" for i, p in reversed(list(enumerate(points)))]
    line = " ".join(f"{x(i):.1f},{y(p['lift']):.1f}" for i, p in enumerate(points))
    return (
        '<svg width="600" height="240" role="img"><title>cumulative relative lift</title>'
        f'<polygon points="{" ".join(band)}" fill="#ccd"/>'
        f'<line x1="40" y1="{y(0):.1f}" x2="560" y2="{y(0):.1f}" stroke="#999" stroke-dasharray="4"/>'
        f'<polyline points="{line}" fill="none" stroke="#225" stroke-width="2"/>'
        f'<text x="40" y="236" font-size="10">{escape(points[0]["day"])}</text>'
        f'<text x="500" y="236" font-size="10">{escape(points[-1]["day"])}</text>'
        f'<text x="2" y="{y(y_hi) + 10:.1f}" font-size="10">{_pct(y_hi)}</text></svg>'
    )


def split_plot(phases: list[dict[str, Any]]) -> str:
    """Observed challenger share per phase as bars, the expected share as a tick."""
    parts = [f'<svg width="600" height="{30 * len(phases) + 10}" role="img"><title>traffic split</title>']
    x = _scale(0, 1, 600, 120)
    for i, ph in enumerate(phases):
        y, total = 10 + 30 * i, sum(ph["units"].values()) or 1
        share = ph["units"].get("challenger", 0) / total
        color = "#c00" if ph["srm"] and ph["srm"]["p_value"] < ph["srm"]["threshold"] else "#4a4"
        parts.append(f'<text x="5" y="{y + 14}" font-size="12">{escape(ph["phase"])} {share:.1%}</text>')
        parts.append(f'<rect x="120" y="{y}" width="{x(share) - 120:.1f}" height="18" fill="{color}"/>')
        if ph["expected_split"]:
            ex = x(ph["expected_split"]["challenger"])
            parts.append(
                f'<line x1="{ex:.1f}" y1="{y - 3}" x2="{ex:.1f}" y2="{y + 21}" stroke="#000" stroke-width="2"/>'
            )
    return "".join(parts) + "</svg>"


def metrics_table(metrics: list[dict[str, Any]]) -> str:
    """Table of every metric in a phase."""
    names = ("metric", "champion", "challenger", "lift", "CI (always valid)", "p", "p adj.", "P(win)")
    head = "<tr>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
    rows = []
    for m in metrics:
        rel, seq = m["relative"], m["sequential_relative"]
        rows.append(
            f"<tr><td>{escape(m['name'])}</td><td>{m['champion']['value']:.4g}</td><td>{m['challenger']['value']:.4g}</td>"
            f"<td>{_pct(rel['estimate'])}</td><td>[{_pct(seq['ci'][0])}, {_pct(seq['ci'][1])}]</td>"
            f"<td>{rel['p_value']:.4f}</td><td>{m['adjusted_p_value']:.4f}</td><td>{m['bayesian']['chance_to_win']:.1%}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(report: dict[str, Any]) -> str:
    """The page for a JSON-safe report (``evaluation.report.to_json``)."""
    verdict = report["verdict"]
    body = [f"<h1>Experiment {escape(report['experiment'])}</h1>",
            f'<p class="verdict">Verdict: <b>{escape(verdict["action"])}</b>'
            f'{" → " + escape(verdict["next_phase"]) if verdict["next_phase"] else ""}</p>',
            "<ul>" + "".join(f"<li>{escape(r)}</li>" for r in verdict["reasons"]) + "</ul>",
            "<h2>Traffic split</h2>", split_plot(report["phases"])]  # fmt: skip
    for ph in report["phases"]:
        span = f"{escape(ph['first_ts'])} to {escape(ph['last_ts'])}; units {ph['units']}"
        body.append(f"<h2>Phase {escape(ph['phase'])}</h2><p>{span}</p>")
        if ph["srm"]:
            srm = ph["srm"]
            cls = "srm" if srm["p_value"] < srm["threshold"] else "ok"
            text = f"chi-square {srm['chi2']:.3f}, p = {srm['p_value']:.4g} (threshold {srm['threshold']})"
            body.append(f'<p class="{cls}">Sample-ratio check: {text}</p>')
        if ph["metrics"]:
            body += [metrics_table(ph["metrics"]), lift_plot(ph["metrics"])]
        if ph["timeline"]:
            body += ["<h3>Cumulative lift of the primary metric</h3>", timeline_plot(ph["timeline"])]
    if report["shadow"]:
        sh = report["shadow"]
        text = (
            f"{sh['pairs']} pairs; exact match {sh['exact_match']:.1%}, normalized {sh['normalized_match']:.1%}, "
            f"mean ROUGE-L {sh['mean_similarity']:.3f}"
        )
        body.append(f"<h2>Shadow</h2><p>{text}</p>")
    body.append(f"<h2>Settings</h2><pre>{escape(str(report['settings']))}</pre>")
    head = f'<meta charset="utf-8"><title>{escape(report["experiment"])}</title><style>{STYLE}</style>'
    return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>"
