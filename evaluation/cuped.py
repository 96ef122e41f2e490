"""CUPED inputs from SQL: each unit's value in a phase with its pre-period value as the covariate.

Per unit of the phase and per metric: ``post`` is its value of the metric in the phase,
``sum(numerator) / sum(denominator)`` over its served responses (units with a zero denominator
are left out of that metric); ``pre`` is the same ratio over its served responses of any
deployment in the ``pre_days`` days before the phase's first response (0 when it had none or its
denominator was 0). One SQL pass serves every metric: per arm and metric it returns ``n``, the
sums and sums of squares of post and pre, and ``sum(post * pre)``; the test itself is
``evaluation.significance.cuped_t_test``. The estimand is the mean of per-unit values, which
differs from the ratio metric's ``sum / sum`` when units have unequal denominators.
"""

from __future__ import annotations

from collections.abc import Sequence

from evaluation.metrics import FEEDBACK_CTE, Metric, Queryable
from evaluation.moments import Paired, SampleMean
from evaluation.significance import Sides, TestResult, cuped_t_test

CUPED_SQL = """
WITH {fb}
start AS (SELECT min(ts) AS t0 FROM interactions WHERE deployment_id = ? AND phase = ?),
post AS (SELECT i.arm, i.unit_id, {totals}
         FROM interactions i{join}
         WHERE i.deployment_id = ? AND i.phase = ? AND i.role = 'served'
         GROUP BY ALL),
pre AS (SELECT i.unit_id, {totals}
        FROM interactions i{join}, start
        WHERE i.role = 'served' AND i.ts < start.t0 AND i.ts >= start.t0 - to_days(?::INTEGER)
        GROUP BY ALL),
v AS (SELECT post.arm, {values} FROM post LEFT JOIN pre USING (unit_id))
SELECT arm, {sums} FROM v GROUP BY arm
"""


def cuped_sql(metrics: Sequence[Metric]) -> str:
    """The one-pass CUPED query for ``metrics`` (parameters: experiment, phase, experiment, phase, days)."""
    totals = ", ".join(
        f"sum({m.numerator})::DOUBLE AS n{k}, sum({m.denominator})::DOUBLE AS d{k}" for k, m in enumerate(metrics)
    )
    values = ", ".join(
        f"post.d{k} <> 0 AS ok{k}, post.n{k} / post.d{k} AS y{k}, "
        f"coalesce(CASE WHEN pre.d{k} <> 0 THEN pre.n{k} / pre.d{k} END, 0) AS x{k}"
        for k in range(len(metrics))
    )
    sums = ", ".join(
        f"count(*) FILTER (WHERE ok{k}) AS n{k}, sum(y{k}) FILTER (WHERE ok{k}) AS s{k}, "
        f"sum(y{k} * y{k}) FILTER (WHERE ok{k}) AS ss{k}, sum(x{k}) FILTER (WHERE ok{k}) AS ps{k}, "
        f"sum(x{k} * x{k}) FILTER (WHERE ok{k}) AS pss{k}, sum(y{k} * x{k}) FILTER (WHERE ok{k}) AS sp{k}"
        for k in range(len(metrics))
    )
    # the feedback aggregate is only joined when a metric reads it (it costs a scan of feedback)
    needs_feedback = any("fb." in m.numerator + m.denominator for m in metrics)
    fb, join = (FEEDBACK_CTE + ",", " LEFT JOIN fb USING (interaction_id)") if needs_feedback else ("", "")
    return CUPED_SQL.format(fb=fb, join=join, totals=totals, values=values, sums=sums)


def cuped_statistics_of(
    db: Queryable, experiment: str, phase: str, metrics: Sequence[Metric], pre_days: int = 14
) -> dict[str, dict[str, Paired]]:
    """Per metric and arm, the post/pre sufficient statistics in ``phase`` (arms without units left out)."""
    out: dict[str, dict[str, Paired]] = {m.name: {} for m in metrics}
    for row in db.query(cuped_sql(metrics), [experiment, phase, experiment, phase, pre_days]):
        for k, metric in enumerate(metrics):
            n = int(row[f"n{k}"])
            if n:
                post = SampleMean(n, float(row[f"s{k}"] or 0), float(row[f"ss{k}"] or 0))
                pre = SampleMean(n, float(row[f"ps{k}"] or 0), float(row[f"pss{k}"] or 0))
                out[metric.name][row["arm"]] = Paired(post, pre, float(row[f"sp{k}"] or 0))
    return out


def cuped_statistics(
    db: Queryable, experiment: str, phase: str, metric: Metric, pre_days: int = 14
) -> dict[str, Paired]:
    """Per arm, the post/pre sufficient statistics of ``metric`` in ``phase``."""
    return cuped_statistics_of(db, experiment, phase, [metric], pre_days)[metric.name]


def cuped_tests(
    db: Queryable, experiment: str, phase: str, metrics: Sequence[Metric], *, relative: bool = True,
    alpha: float = 0.05, sides: Sides = "two-sided", pre_days: int = 14,
) -> dict[str, TestResult]:  # fmt: skip
    """CUPED-adjusted Welch tests of every metric in ``phase`` from one SQL pass (relative lift by default)."""
    empty = Paired(SampleMean(0, 0, 0), SampleMean(0, 0, 0), 0.0)
    out = {}
    for name, stats in cuped_statistics_of(db, experiment, phase, metrics, pre_days).items():
        a, b = stats.get("champion", empty), stats.get("challenger", empty)
        out[name] = cuped_t_test(a, b, relative=relative, alpha=alpha, sides=sides)
    return out


def cuped_test(
    db: Queryable, experiment: str, phase: str, metric: Metric, *, relative: bool = True, alpha: float = 0.05,
    sides: Sides = "two-sided", pre_days: int = 14,
) -> TestResult:  # fmt: skip
    """CUPED-adjusted Welch test of ``metric`` in ``phase`` (relative lift by default)."""
    tests = cuped_tests(db, experiment, phase, [metric], relative=relative, alpha=alpha, sides=sides, pre_days=pre_days)
    return tests[metric.name]
