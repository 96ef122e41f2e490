"""CUPED inputs from SQL: each unit's value in a phase with its pre-period value as the covariate.

Per unit of the phase: ``post`` is its value of the metric in the phase, ``sum(numerator) /
sum(denominator)`` over its served responses (units with a zero denominator are left out);
``pre`` is the same ratio over its served responses of any deployment in the ``pre_days`` days
before the phase's first response (0 when it had none). One SQL pass returns, per arm, ``n``,
the sums and sums of squares of post and pre, and ``sum(post * pre)``; the test itself is
``evaluation.significance.cuped_t_test``. The estimand is the mean of per-unit values, which
differs from the ratio metric's ``sum / sum`` when units have unequal denominators.
"""

from __future__ import annotations

from evaluation.metrics import FEEDBACK_CTE, Metric, Queryable
from evaluation.moments import Paired, SampleMean
from evaluation.significance import Sides, TestResult, cuped_t_test

CUPED_SQL = """
WITH {fb},
start AS (SELECT min(ts) AS t0 FROM interactions WHERE deployment_id = ? AND phase = ?),
post AS (SELECT i.arm, i.unit_id, sum({num})::DOUBLE / sum({den}) AS v
         FROM interactions i LEFT JOIN fb USING (interaction_id)
         WHERE i.deployment_id = ? AND i.phase = ? AND i.role = 'served'
         GROUP BY ALL HAVING sum({den}) <> 0),
pre AS (SELECT i.unit_id, sum({num})::DOUBLE / sum({den}) AS v
        FROM interactions i LEFT JOIN fb USING (interaction_id), start
        WHERE i.role = 'served' AND i.ts < start.t0 AND i.ts >= start.t0 - to_days(?::INTEGER)
        GROUP BY ALL HAVING sum({den}) <> 0)
SELECT post.arm, count(*) AS n, sum(post.v) AS s, sum(post.v * post.v) AS ss,
       sum(coalesce(pre.v, 0)) AS ps, sum(coalesce(pre.v, 0) ^ 2) AS pss, sum(post.v * coalesce(pre.v, 0)) AS sp
FROM post LEFT JOIN pre USING (unit_id) GROUP BY post.arm
"""


def cuped_statistics(
    db: Queryable, experiment: str, phase: str, metric: Metric, pre_days: int = 14
) -> dict[str, Paired]:
    """Per arm, the post/pre sufficient statistics of ``metric`` in ``phase``."""
    sql = CUPED_SQL.format(fb=FEEDBACK_CTE, num=metric.numerator, den=metric.denominator)
    out = {}
    for row in db.query(sql, [experiment, phase, experiment, phase, pre_days]):
        n = int(row["n"])
        post = SampleMean(n, float(row["s"]), float(row["ss"]))
        pre = SampleMean(n, float(row["ps"]), float(row["pss"]))
        out[row["arm"]] = Paired(post, pre, float(row["sp"]))
    return out


def cuped_test(
    db: Queryable, experiment: str, phase: str, metric: Metric, *, relative: bool = True, alpha: float = 0.05,
    sides: Sides = "two-sided", pre_days: int = 14,
) -> TestResult:  # fmt: skip
    """CUPED-adjusted Welch test of ``metric`` in ``phase`` (relative lift by default)."""
    stats = cuped_statistics(db, experiment, phase, metric, pre_days)
    empty = Paired(SampleMean(0, 0, 0), SampleMean(0, 0, 0), 0.0)
    a, b = stats.get("champion", empty), stats.get("challenger", empty)
    return cuped_t_test(a, b, relative=relative, alpha=alpha, sides=sides)
