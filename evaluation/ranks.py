"""Mann-Whitney U on per-unit metric values, with the ranks computed in DuckDB SQL.

Bounded sample: at most ``sample_per_arm`` units per arm, chosen deterministically by
``hash(unit_id, seed)`` (reproducible, independent of the thread count); a unit's value is its
ratio ``sum(numerator) / sum(denominator)`` (units with a zero denominator are left out). Only
the rank sums, counts and the tie term leave DuckDB.

Definitions (normal approximation with tie and continuity corrections, as scipy's asymptotic
method): ``U_b = R_b - n_b (n_b + 1) / 2`` with mid-ranks for ties; ``mu = n_a n_b / 2``;
``sigma**2 = n_a n_b / 12 * ((n + 1) - sum(t**3 - t) / (n (n - 1)))``; two-sided
``z = (|U_b - mu| - 0.5) / sigma``, ``p = 2 (1 - Phi(z))``. The effect size is
``U_b / (n_a n_b)``: the probability that a challenger unit beats a champion unit (ties count half).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scipy import stats

from evaluation import constants
from evaluation.metrics import FEEDBACK_CTE, Metric, Queryable

SAMPLE_CTE = """{fb}
r AS (SELECT i.arm, i.unit_id, ({num}) AS m, ({den}) AS d
      FROM interactions i {join}
      WHERE i.deployment_id = ? AND i.phase = ? AND i.role = 'served'),
u AS (SELECT arm, unit_id, sum(m)::DOUBLE / sum(d) AS v FROM r GROUP BY arm, unit_id HAVING sum(d) <> 0
      QUALIFY row_number() OVER (PARTITION BY arm ORDER BY hash(unit_id, ?::BIGINT)) <= ?)"""

MANN_WHITNEY_SQL = """
WITH {sample},
ranked AS (SELECT arm, rank() OVER (ORDER BY v) + (count(*) OVER (PARTITION BY v) - 1) / 2.0 AS r FROM u),
ties AS (SELECT coalesce(sum(t * t * t - t), 0) AS tie FROM (SELECT count(*)::DOUBLE AS t FROM u GROUP BY v))
SELECT arm, count(*) AS n, sum(r) AS rank_sum, any_value(ties.tie) AS tie FROM ranked, ties GROUP BY arm
"""


@dataclass(frozen=True)
class MannWhitneyResult:
    """U of the challenger, its normal-approximation p-value and the probability of superiority."""

    u: float = 0.0
    p_value: float = 1.0
    effect: float = 0.5
    n_a: int = 0
    n_b: int = 0
    method: str = "mann-whitney-u (asymptotic, tie and continuity corrected)"
    error: str | None = None
    inputs: dict[str, float] = field(default_factory=dict)


def sample_cte(metric: Metric) -> str:
    """The CTEs selecting a bounded, seeded sample of per-unit values of ``metric`` (CTE ``u``)."""
    # the feedback aggregate is only joined when the metric reads it (it costs a scan of feedback)
    needs_feedback = "fb." in metric.numerator + metric.denominator
    fb, join = (FEEDBACK_CTE + ",", "LEFT JOIN fb USING (interaction_id)") if needs_feedback else ("", "")
    return SAMPLE_CTE.format(fb=fb, join=join, num=metric.numerator, den=metric.denominator)


def mann_whitney(
    db: Queryable, experiment: str, phase: str, metric: Metric, *, sample_per_arm: int, seed: int
) -> MannWhitneyResult:
    """Mann-Whitney U of challenger against champion on per-unit values of ``metric`` in ``phase``."""
    sql = MANN_WHITNEY_SQL.format(sample=sample_cte(metric))
    rows = {r["arm"]: r for r in db.query(sql, [experiment, phase, seed, sample_per_arm])}
    return mann_whitney_from_ranks(rows.get("champion"), rows.get("challenger"))


def mann_whitney_from_ranks(a: dict[str, float] | None, b: dict[str, float] | None) -> MannWhitneyResult:
    """The test from each arm's unit count and rank sum and the pooled tie term."""
    if not a or not b:
        return MannWhitneyResult(error=constants.NO_SAMPLE)
    n_a, n_b, tie = int(a["n"]), int(b["n"]), float(a["tie"])
    n = n_a + n_b
    u = float(b["rank_sum"]) - n_b * (n_b + 1) / 2
    inputs = {"n_a": n_a, "n_b": n_b, "rank_sum_b": float(b["rank_sum"]), "tie_term": tie}
    variance = n_a * n_b / 12 * ((n + 1) - tie / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return MannWhitneyResult(u=u, n_a=n_a, n_b=n_b, error=constants.ZERO_VARIANCE, inputs=inputs)
    z = max(abs(u - n_a * n_b / 2) - 0.5, 0.0) / math.sqrt(variance)
    p = min(1.0, float(2 * stats.norm.sf(z)))
    return MannWhitneyResult(u=u, p_value=p, effect=u / (n_a * n_b), n_a=n_a, n_b=n_b, inputs=inputs)
