"""Quantile metrics (latency p50/p95/p99): gbstats' quantile test, and bootstrap intervals.

gbstats' method, computed exactly in SQL over every served response of the phase: for quantile
``nu`` of ``n`` values, ``q_hat`` is the sample quantile and ``q_lower``/``q_upper`` the sample
quantiles at ``nu -/+ z sqrt(nu (1 - nu) / n)`` with ``z = Phi^-1(1 - alpha/2)`` (an order-statistic
interval). The per-observation variance is ``(n - 1) ((q_upper - q_lower) / (2 z))**2``; when
``n <= z**2 nu / (1 - nu)`` or ``n <= z**2 (1 - nu) / nu`` the interval leaves [0, 1] and the
quantile cannot be bounded. Means ``q_hat`` and these variances then enter the Welch test on the
relative lift. Sample quantiles are DuckDB's ``quantile_disc`` (the ``ceil(n q)``-th smallest value).

Bootstrap (bounded sample): up to ``sample_per_arm`` responses per arm chosen by
``hash(interaction_id, seed)``; each of ``resamples`` replicates resamples both arms with
replacement and takes the relative difference of their quantiles; the CI is the percentile
interval of the replicates. A replicate's quantile is drawn directly as an order statistic
(``bootstrap_quantiles``), which has the same distribution as resampling and costs O(1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from evaluation import constants
from evaluation.metrics import Queryable
from evaluation.significance import Moments, Sides, TestResult, welch_t_test

QUANTILE_SQL = """
SELECT count(latency_ms) AS n, quantile_disc(latency_ms, [?, ?, ?]) AS q
FROM interactions WHERE deployment_id = ? AND phase = ? AND arm = ? AND role = 'served'
"""
SAMPLE_SQL = """
SELECT arm, latency_ms FROM interactions WHERE deployment_id = ? AND phase = ? AND role = 'served'
QUALIFY row_number() OVER (PARTITION BY arm ORDER BY hash(interaction_id, ?::BIGINT)) <= ?
"""


@dataclass(frozen=True)
class QuantileStatistic:
    """An arm's quantile estimate with its order-statistic bounds."""

    n: int
    nu: float
    q_hat: float
    q_lower: float
    q_upper: float
    alpha: float = 0.05

    @property
    def variance(self) -> float:
        """gbstats' per-observation variance of the sample quantile; 0 when it cannot be bounded."""
        z = stats.norm.ppf(1 - self.alpha / 2)
        if self.n <= z**2 * self.nu / (1 - self.nu) or self.n <= z**2 * (1 - self.nu) / self.nu:
            return 0.0
        return float((self.n - 1) * ((self.q_upper - self.q_lower) / (2 * z)) ** 2)


def quantile_statistic(
    db: Queryable, experiment: str, phase: str, arm: str, nu: float, alpha: float
) -> QuantileStatistic:
    """The latency quantile of one arm in one phase, computed in SQL."""
    count = db.query(
        "SELECT count(*) AS n FROM interactions WHERE deployment_id = ? AND phase = ? AND arm = ? AND role = 'served'",
        [experiment, phase, arm],
    )
    n = int(count[0]["n"]) if count else 0
    if n == 0:
        return QuantileStatistic(0, nu, 0.0, 0.0, 0.0, alpha)
    half = stats.norm.ppf(1 - alpha / 2) * math.sqrt(nu * (1 - nu) / n)
    fractions = [nu, max(0.0, nu - half), min(1.0, nu + half)]
    row = db.query(QUANTILE_SQL, [*fractions, experiment, phase, arm])[0]
    q_hat, q_lower, q_upper = (float(v) for v in row["q"])
    return QuantileStatistic(n, nu, q_hat, q_lower, q_upper, alpha)


def quantile_test(a: QuantileStatistic, b: QuantileStatistic, *, sides: Sides = "two-sided") -> TestResult:
    """Welch test of the relative lift in the quantile (gbstats' quantile method)."""
    result = welch_t_test(
        Moments(a.n, a.q_hat, a.variance), Moments(b.n, b.q_hat, b.variance),
        relative=True, sides=sides, alpha=a.alpha, method=f"quantile-p{a.nu * 100:g}",
    )  # fmt: skip
    bounds = {"q_lower_a": a.q_lower, "q_upper_a": a.q_upper, "q_lower_b": b.q_lower, "q_upper_b": b.q_upper}
    return TestResult(**{**result.__dict__, "inputs": result.inputs | bounds})


@dataclass(frozen=True)
class BootstrapResult:
    """Percentile bootstrap interval of the relative lift in a quantile."""

    estimate: float = 0.0
    ci: tuple[float, float] = (0.0, 0.0)
    resamples: int = 0
    sample_sizes: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def latency_sample(db: Queryable, experiment: str, phase: str, per_arm: int, seed: int) -> dict[str, np.ndarray]:
    """A bounded, seeded sample of served latencies per arm."""
    rows = db.query(SAMPLE_SQL, [experiment, phase, seed, per_arm])
    out: dict[str, list[float]] = {}
    for row in rows:
        out.setdefault(row["arm"], []).append(float(row["latency_ms"]))
    return {arm: np.asarray(values) for arm, values in out.items()}


def bootstrap_quantiles(values: np.ndarray, nu: float, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The ``nu`` quantiles of ``resamples`` bootstrap resamples of ``values``, drawn in O(resamples).

    A resample draws indices ``floor(n U)`` with ``U`` uniform, and ``floor`` is monotone, so its
    ``k``-th smallest index is ``floor(n U_(k))`` with ``U_(k) ~ Beta(k, n - k + 1)``, the
    ``k``-th order statistic of ``n`` uniforms. With ``k = ceil(nu n)`` (the inverted-CDF
    quantile) each replicate is one Beta draw into the sorted sample: the same distribution as
    resampling ``n`` values, without drawing them.
    """
    ordered = np.sort(values)
    n = len(ordered)
    k = max(1, math.ceil(nu * n))
    index = np.minimum(np.floor(n * rng.beta(k, n - k + 1, resamples)).astype(np.int64), n - 1)
    drawn: np.ndarray = ordered[index]
    return drawn


def bootstrap_quantile_lift(
    a: np.ndarray, b: np.ndarray, nu: float, *, resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> BootstrapResult:
    """Percentile bootstrap CI of ``q_b / q_a - 1``."""
    sizes = {"champion": len(a), "challenger": len(b)}
    if len(a) == 0 or len(b) == 0:
        return BootstrapResult(sample_sizes=sizes, error=constants.NO_SAMPLE)
    q_a = np.quantile(a, nu, method="inverted_cdf")
    if q_a == 0:
        return BootstrapResult(sample_sizes=sizes, error=constants.ZERO_CONTROL_MEAN)
    rng = np.random.default_rng(seed)
    lifts = bootstrap_quantiles(b, nu, resamples, rng) / bootstrap_quantiles(a, nu, resamples, rng) - 1
    low, high = np.quantile(lifts, [alpha / 2, 1 - alpha / 2])
    estimate = float(np.quantile(b, nu, method="inverted_cdf") / q_a - 1)
    return BootstrapResult(estimate, (float(low), float(high)), resamples, sizes)
