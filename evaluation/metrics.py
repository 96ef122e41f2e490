"""Metric definitions as SQL, and their per-unit sufficient statistics per arm and ramp phase.

Every metric is request-level and analysed at the unit of assignment (the user) as a ratio
metric: for unit ``u``, ``m_u = sum(numerator)`` and ``d_u = sum(denominator)`` over its served
responses; the arm's value is ``sum(m_u) / sum(d_u)`` and its variance comes from the delta
method (``evaluation.moments.Ratio``). One SQL scan per experiment yields, for every metric and
every (phase, arm): ``n`` units, ``sum m``, ``sum m**2``, ``sum d``, ``sum d**2``, ``sum m d``.
No response row leaves DuckDB.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from evaluation.config import ExperimentSettings
from evaluation.errors import InvalidSplitError, UnknownExperimentError, UnknownMetricError
from evaluation.moments import Ratio, SampleMean

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


BUILT_IN: tuple[Metric, ...] = (
    Metric("positive_feedback_rate", "coalesce(fb.ups, 0)", "coalesce(fb.ups + fb.downs, 0)"),
    Metric("negative_feedback_rate", "coalesce(fb.downs, 0)", "coalesce(fb.ups + fb.downs, 0)", False),
    Metric("mean_rating", "coalesce(fb.rating_sum, 0)", "coalesce(fb.ratings, 0)"),
    Metric("correction_rate", Flag("coalesce(fb.corrections, 0) > 0"), "1", False),
    Metric("error_rate", Flag("i.error IS NOT NULL"), "1", False),
    Metric("latency_ms", "i.latency_ms", "1", False),
    Metric("completion_tokens", "i.completion_tokens", "1"),
    Metric("confidence", "coalesce(i.confidence, 0)", Flag("i.confidence IS NOT NULL")),
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
    exprs = list(dict.fromkeys(e for m in metrics for e in (m.numerator, m.denominator)))
    at = {e: j for j, e in enumerate(exprs)}
    columns = [per_unit_sum(e, j) for j, e in enumerate(exprs)]
    per_row = "".join(f", {row}" for row, _ in columns if row)
    per_unit = ", ".join(total for _, total in columns)
    sums = ", ".join(f"sum(e{j}) AS s{j}, sum(e{j} * e{j}) AS ss{j}" for j in range(len(exprs)))
    products = ", ".join(f"sum(e{at[m.numerator]} * e{at[m.denominator]}) AS md{k}" for k, m in enumerate(metrics))
    named = ", ".join(
        f"s{at[m.numerator]} AS m{k}_s, ss{at[m.numerator]} AS m{k}_ss, "
        f"s{at[m.denominator]} AS d{k}_s, ss{at[m.denominator]} AS d{k}_ss, md{k}"
        for k, m in enumerate(metrics)
    )
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
agg AS (SELECT {keys}, count(*) AS n, {sums}, {products} FROM u GROUP BY ALL)
SELECT phase, CASE WHEN challenger THEN 'challenger' ELSE 'champion' END AS arm{", day" if cohort else ""}, n, {named}
FROM agg ORDER BY ALL
"""  # noqa: S608


def ratio_of(row: dict[str, Any], k: int) -> Ratio:
    """The ``Ratio`` record of metric ``k`` in a row of ``moments_sql``."""
    n = int(row["n"])
    m = SampleMean(n, float(row[f"m{k}_s"] or 0), float(row[f"m{k}_ss"] or 0))
    d = SampleMean(n, float(row[f"d{k}_s"] or 0), float(row[f"d{k}_ss"] or 0))
    return Ratio(n, m, d, float(row[f"md{k}"] or 0))


Moments = dict[str, dict[str, dict[str, Ratio]]]  # phase -> arm -> metric -> statistics


def metric_moments(db: Queryable, experiment: str, metrics: Sequence[Metric]) -> Moments:
    """Sufficient statistics of every metric per phase and arm; unknown experiments raise."""
    rows = db.query(moments_sql(metrics), [experiment])
    if not rows:
        raise UnknownExperimentError(f"no experiment {experiment!r}: no served responses carry that deployment id")
    out: Moments = {}
    for row in rows:
        out.setdefault(row["phase"], {})[row["arm"]] = {m.name: ratio_of(row, k) for k, m in enumerate(metrics)}
    return out


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
