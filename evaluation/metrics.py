"""Metric definitions as SQL, and their per-unit sufficient statistics per arm and ramp phase.

Every metric is request-level and analysed at the unit of assignment (the user) as a ratio
metric: for unit ``u``, ``m_u = sum(numerator)`` and ``d_u = sum(denominator)`` over its served
responses; the arm's value is ``sum(m_u) / sum(d_u)`` and its variance comes from the delta
method (``evaluation.moments.Ratio``). One SQL scan per experiment yields, for every metric and
every (phase, arm): ``n`` units, ``sum m``, ``sum m**2``, ``sum d``, ``sum d**2``, ``sum m d``.
No response row leaves DuckDB.

Where the per-unit totals come from: built-in metrics sum ``unit_rollup`` (a few additive rows
per unit, kept by the worker's periodic job behind a watermark: ``feedback.rollup``) together with
the same totals computed from the rows ingested past the watermark (the tail: at most one refresh
interval's arrivals), in one query, so the numbers are exact and current. The same query checks
the watermark's guard (the rows at or before it are those rolled up); if it fails, and always for
custom metrics, the raw responses are joined to their feedback (``FEEDBACK_CTE``) and grouped per
unit. Both give the same statistics up to floating-point summation order.

Built-in metrics (numerator / denominator per served response):

- ``positive_feedback_rate``: thumbs up / thumbs given
- ``negative_feedback_rate``: thumbs down / thumbs given (lower is better)
- ``mean_rating``: sum of 1-5 ratings / ratings given
- ``correction_rate``: responses with a correction / responses (lower is better)
- ``error_rate``: responses with an error / responses (lower is better)
- ``latency_ms``: latency / responses (lower is better)
- ``completion_tokens``: completion tokens / responses
- ``confidence``: confidence / responses that have one

Custom metrics (``ExperimentSettings.custom_metrics``) add SQL numerator/denominator pairs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from evaluation.config import ExperimentSettings
from evaluation.errors import InvalidSplitError, UnknownExperimentError, UnknownMetricError
from evaluation.moments import Ratio, SampleMean
from feedback.rollup import current_sql, tail_sql

ARMS = ("champion", "challenger")


class Queryable(Protocol):
    """Anything that runs SQL with parameters and returns rows as dicts (``DuckDBStore``)."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of ``sql``."""
        ...


class Flag(str):
    """A per-response 0/1 expression, ``(condition)::INT``, usable wherever SQL text is.

    Per unit it is counted with a filter instead of summed: DuckDB's grouped ``count`` keeps a
    narrower state than ``sum(DOUBLE)``, and the per-unit grouping is most of a report's time.
    """

    condition: str

    def __new__(cls, condition: str) -> Flag:
        flag = super().__new__(cls, f"({condition})::INT")
        flag.condition = condition
        return flag


@dataclass(frozen=True, slots=True)
class Metric:
    """A ratio metric: SQL numerator and denominator per served response."""

    name: str
    numerator: str
    denominator: str
    higher_is_better: bool = True
    rollup: tuple[str, str] | None = None  # per-unit numerator and denominator over ``unit_rollup``


BUILT_IN: tuple[Metric, ...] = (
    Metric(
        "positive_feedback_rate", "coalesce(fb.ups, 0)", "coalesce(fb.ups + fb.downs, 0)", rollup=("ups", "ups + downs")
    ),
    Metric(
        "negative_feedback_rate",
        "coalesce(fb.downs, 0)",
        "coalesce(fb.ups + fb.downs, 0)",
        False,
        rollup=("downs", "ups + downs"),
    ),
    Metric("mean_rating", "coalesce(fb.rating_sum, 0)", "coalesce(fb.ratings, 0)", rollup=("rating_sum", "ratings")),
    Metric("correction_rate", Flag("coalesce(fb.corrections, 0) > 0"), "1", False, rollup=("corrected", "responses")),
    Metric("error_rate", Flag("i.error IS NOT NULL"), "1", False, rollup=("errors", "responses")),
    Metric("latency_ms", "i.latency_ms", "1", False, rollup=("latency_ms", "responses")),
    Metric("completion_tokens", "i.completion_tokens", "1", rollup=("completion_tokens", "responses")),
    Metric(
        "confidence",
        "coalesce(i.confidence, 0)",
        Flag("i.confidence IS NOT NULL"),
        rollup=("confidence", "confidences"),
    ),
)

FEEDBACK_CTE = """fb AS (
    SELECT interaction_id,
           count(*) FILTER (WHERE thumb = 'up')   AS ups,
           count(*) FILTER (WHERE thumb = 'down') AS downs,
           sum(rating)                            AS rating_sum,
           count(rating)                          AS ratings,
           count(correction)                      AS corrections
    FROM feedback GROUP BY interaction_id
)"""


def all_metrics(settings: ExperimentSettings) -> list[Metric]:
    """Built-in metrics followed by the configured custom ones."""
    custom = [Metric(c.name, c.numerator, c.denominator, c.higher_is_better) for c in settings.custom_metrics]
    return [*BUILT_IN, *custom]


def select_metrics(settings: ExperimentSettings, names: Sequence[str] | None) -> list[Metric]:
    """The named metrics (all when ``names`` is empty); an unknown name raises with the known ones."""
    known = {m.name: m for m in all_metrics(settings)}
    if not names:
        return list(known.values())
    missing = [n for n in names if n not in known]
    if missing:
        raise UnknownMetricError(f"unknown metric {', '.join(missing)}; known metrics: {', '.join(known)}")
    return [known[n] for n in names]


def per_unit_sum(expr: str, j: int) -> tuple[str | None, str]:
    """The per-row column feeding expression ``j`` (None when it needs none) and its per-unit total."""
    if expr == "1":
        return None, f"count(*)::DOUBLE AS e{j}"
    if isinstance(expr, Flag):
        return f"({expr.condition}) AS f{j}", f"(count(*) FILTER (WHERE f{j}))::DOUBLE AS e{j}"
    # DOUBLE per row: DuckDB sums integers into 128-bit accumulators, which is several times slower
    return f"({expr})::DOUBLE AS e{j}", f"sum(e{j}) AS e{j}"


def moments_sql(metrics: Sequence[Metric], *, cohort: bool = False) -> str:
    """One scan: per-unit totals, then per (phase, arm) sums of totals, squares and products.

    Expressions shared by several metrics (most denominators) are totalled once per unit; the
    arm is grouped as a boolean (a narrower key than its name). Parameters: the experiment id.
    With ``cohort``, rows are also grouped by each unit's first day in one phase (parameters:
    experiment, phase, experiment, phase), for cumulative timelines.
    """
    exprs = _expressions(metrics, lambda m: (m.numerator, m.denominator))
    columns = [per_unit_sum(e, j) for j, e in enumerate(exprs)]
    per_row = "".join(f", {row}" for row, _ in columns if row)
    per_unit = ", ".join(total for _, total in columns)
    first, day, join, where = "", "", "", ""
    if cohort:
        first = (
            "first AS (SELECT unit_id, min(ts)::DATE AS day FROM interactions "
            "WHERE deployment_id = ? AND phase = ? AND role = 'served' GROUP BY unit_id),"
        )
        day, join, where = ", f.day", " JOIN first f USING (unit_id)", " AND i.phase = ?"
    needs_feedback = any("fb." in e for e in exprs)
    fb, fb_join = (FEEDBACK_CTE + ",", " LEFT JOIN fb USING (interaction_id)") if needs_feedback else ("", "")
    keys = "phase, challenger" + (", day" if cohort else "")
    # metric expressions come from code and settings (trusted); the experiment id is a bound parameter
    return f"""
WITH {first} {fb}
r AS (SELECT i.phase, i.arm = 'challenger' AS challenger, i.unit_id{day}{per_row}
      FROM interactions i{fb_join}{join}
      WHERE i.deployment_id = ? AND i.role = 'served' AND i.arm IN ('champion', 'challenger'){where}),
u AS (SELECT {keys}, unit_id, {per_unit} FROM r GROUP BY ALL),
{_across_units(metrics, exprs, lambda m: (m.numerator, m.denominator), keys)}
"""  # noqa: S608


def rollup_moments_sql(metrics: Sequence[Metric]) -> str:
    """``moments_sql`` from ``unit_rollup`` plus the tail past its watermark (every metric needs a ``rollup``
    pair): no join over the stored responses, few rows per unit. Parameter ``$1``: the experiment id.
    Each row also carries ``rollup_current``, the watermark's guard read in the same snapshot."""
    exprs = _expressions(metrics, _rollup_pair)
    per_unit = ", ".join(f"({e})::DOUBLE AS e{j}" for j, e in enumerate(exprs))
    return f"""
WITH {tail_sql("$1")},
t AS (SELECT phase, arm, unit_id, {ROLLUP_SUMS}
      FROM (SELECT * FROM unit_rollup WHERE deployment_id = $1 UNION ALL BY NAME SELECT * FROM rollup_tail)
      WHERE arm IN ('champion', 'challenger') GROUP BY ALL),
u AS (SELECT phase, arm = 'challenger' AS challenger, {per_unit} FROM t),
{_across_units(metrics, exprs, _rollup_pair, "phase, challenger", f", {current_sql()} AS rollup_current")}
"""  # noqa: S608


def _rollup_pair(metric: Metric) -> tuple[str, str]:
    if metric.rollup is None:
        raise ValueError(f"metric {metric.name} has no rollup columns")
    return metric.rollup


def _expressions(metrics: Sequence[Metric], pair: Callable[[Metric], tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(e for m in metrics for e in pair(m)))


def _across_units(
    metrics: Sequence[Metric], exprs: list[str], pair: Callable[[Metric], tuple[str, str]], keys: str, extra: str = ""
) -> str:
    """The tail of a moments query: from per-unit totals ``u`` (``e0``, ``e1``, ...) to the named sums."""
    at = {e: j for j, e in enumerate(exprs)}
    sums = ", ".join(f"sum(e{j}) AS s{j}, sum(e{j} * e{j}) AS ss{j}" for j in range(len(exprs)))
    products = ", ".join(f"sum(e{at[pair(m)[0]]} * e{at[pair(m)[1]]}) AS md{k}" for k, m in enumerate(metrics))
    named = ", ".join(
        f"s{at[pair(m)[0]]} AS m{k}_s, ss{at[pair(m)[0]]} AS m{k}_ss, "
        f"s{at[pair(m)[1]]} AS d{k}_s, ss{at[pair(m)[1]]} AS d{k}_ss, md{k}"
        for k, m in enumerate(metrics)
    )
    day = ", day" if "day" in keys else ""
    return f"""agg AS (SELECT {keys}, count(*) AS n, {sums}, {products} FROM u GROUP BY ALL)
SELECT phase, CASE WHEN challenger THEN 'challenger' ELSE 'champion' END AS arm{day}, n, {named}{extra}
FROM agg ORDER BY ALL"""  # noqa: S608


def ratio_of(row: dict[str, Any], k: int) -> Ratio:
    """The ``Ratio`` record of metric ``k`` in a row of ``moments_sql``."""
    n = int(row["n"])
    m = SampleMean(n, float(row[f"m{k}_s"] or 0), float(row[f"m{k}_ss"] or 0))
    d = SampleMean(n, float(row[f"d{k}_s"] or 0), float(row[f"d{k}_ss"] or 0))
    return Ratio(n, m, d, float(row[f"md{k}"] or 0))


Moments = dict[str, dict[str, dict[str, Ratio]]]  # phase -> arm -> metric -> statistics


def metric_moments(db: Queryable, experiment: str, metrics: Sequence[Metric]) -> Moments:
    """Sufficient statistics of every metric per phase and arm; unknown experiments raise.

    From the rollups plus their tail when every metric has rollup columns and the file has the
    rollups (a file read-only before the worker migrated it may not); else from the raw tables.
    """
    rolled = all(m.rollup for m in metrics) and bool(db.query(_HAS_ROLLUPS)[0]["present"])
    rows = db.query(rollup_moments_sql(metrics), [experiment]) if rolled else []
    if not all(row["rollup_current"] for row in rows) or not rows:  # the guard failed, or no rows: ask the raw tables
        rows = db.query(moments_sql(metrics), [experiment])
    if not rows:
        raise UnknownExperimentError(f"no experiment {experiment!r}: no served responses carry that deployment id")
    out: Moments = {}
    for row in rows:
        out.setdefault(row["phase"], {})[row["arm"]] = {m.name: ratio_of(row, k) for k, m in enumerate(metrics)}
    return out


# a unit's totals are the sums of its rows (a refresh appends one per unit it touches)
_ROLLUP_COLUMNS = "responses errors latency_ms completion_tokens confidence confidences ups downs rating_sum ratings"
ROLLUP_SUMS = ", ".join(f"sum({c}) AS {c}" for c in [*_ROLLUP_COLUMNS.split(), "corrected"])
_HAS_ROLLUPS = "SELECT count(*) > 0 AS present FROM duckdb_tables() WHERE table_name = 'rollup_watermark'"

_AB_PHASE = re.compile(r"^ab-(\d{1,2})$")


def phase_split(phase: str) -> dict[str, float] | None:
    """Expected share of units per arm in a phase (``ab-P``: P% challenger); None if not an A/B phase."""
    match = _AB_PHASE.match(phase)
    if not match:
        return None
    percent = int(match.group(1))
    return {"champion": (100 - percent) / 100, "challenger": percent / 100}


def parse_split(text: str) -> dict[str, float]:
    """A split written ``champion/challenger`` in percent, e.g. ``90/10``; must sum to 100."""
    parts = text.replace(",", "/").split("/")
    try:
        champion, challenger = (float(p) for p in parts)
    except ValueError as exc:
        raise InvalidSplitError(f"split {text!r}: write it as champion/challenger percentages, e.g. 90/10") from exc
    if champion < 0 or challenger < 0 or abs(champion + challenger - 100) > 1e-9:
        raise InvalidSplitError(f"split {text!r} sums to {champion + challenger:g}, not 100")
    return {"champion": champion / 100, "challenger": challenger / 100}
