"""Frequentist tests on sufficient statistics: Welch t-test, two-proportion z-test, CUPED.

Definitions (matching GrowthBook's gbstats where it has the method):

- Absolute lift ``mu_b - mu_a`` with variance ``var_b / n_b + var_a / n_a``.
- Relative lift ``(mu_b - mu_a) / mu_a`` with the delta-method variance
  ``var_b / (mu_a**2 n_b) + var_a mu_b**2 / (mu_a**4 n_a)``.
- Welch-Satterthwaite degrees of freedom
  ``(v_b/n_b + v_a/n_a)**2 / (v_b**2/(n_b**2 (n_b-1)) + v_a**2/(n_a**2 (n_a-1)))``.
- ``t = (estimate - test_value) / se``. Two-sided p ``2 (1 - F_t(|t|))`` with CI
  ``estimate ± t_{1-alpha/2} se``; "greater" p ``1 - F_t(t)``, CI ``[estimate - t_{1-alpha} se, inf)``;
  "less" p ``F_t(t)``, CI ``(-inf, estimate + t_{1-alpha} se]``.
- Two-proportion z-test: ``z = (p_b - p_a) / sqrt(p (1-p) (1/n_a + 1/n_b))`` with the pooled
  ``p = (x_a + x_b) / (n_a + n_b)``; the CI on ``p_b - p_a`` uses the unpooled standard error
  ``sqrt(p_a (1-p_a)/n_a + p_b (1-p_b)/n_b)`` and normal quantiles.
- CUPED (regression adjustment on a pre-period covariate): ``theta = cov(post, pre) / var(pre)``
  on both arms pooled; each arm's adjusted mean ``mu_post - theta mu_pre`` and per-unit variance
  ``var_post + theta**2 var_pre - 2 theta cov``; the relative lift divides the adjusted difference
  by the control's unadjusted mean. The adjusted numbers then go through the Welch test above.

Degenerate input never raises: the result carries an ``error`` from ``evaluation.constants``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from scipy import stats

from evaluation import constants
from evaluation.moments import Paired, Statistic

Sides = Literal["two-sided", "greater", "less"]


@dataclass(frozen=True)
class TestResult:
    """One comparison of challenger (b) against champion (a)."""

    method: str
    estimate: float = 0.0
    stderr: float = 0.0
    ci: tuple[float, float] = (0.0, 0.0)
    p_value: float = 1.0
    statistic: float = 0.0
    dof: float = 0.0
    relative: bool = False
    sides: Sides = "two-sided"
    alpha: float = 0.05
    error: str | None = None
    inputs: dict[str, float] = field(default_factory=dict)

    @property
    def significant(self) -> bool:
        """Whether the p-value is below alpha (never with an error)."""
        return self.error is None and self.p_value < self.alpha


@dataclass(frozen=True, slots=True)
class Moments:
    """What a test needs from each arm: units, mean and per-unit variance."""

    n: int
    mean: float
    variance: float

    @staticmethod
    def of(stat: Statistic) -> Moments:
        """The moments of a sufficient-statistics record."""
        return Moments(stat.n, stat.mean, stat.variance)


def degenerate(a: Moments, b: Moments, relative: bool) -> str | None:
    """The reason the two arms cannot be compared, or None."""
    if a.n == 0 or b.n == 0:
        return constants.EMPTY_ARM
    if a.n < 2 or b.n < 2:
        return constants.TOO_FEW_UNITS
    if relative and a.mean == 0:
        return constants.ZERO_CONTROL_MEAN
    if a.variance <= 0 and b.variance <= 0:
        return constants.ZERO_VARIANCE
    return None


def lift(a: Moments, b: Moments, relative: bool, control_mean: float | None = None) -> tuple[float, float]:
    """Point estimate and variance of the lift; ``control_mean`` overrides the relative denominator."""
    base = a.mean if control_mean is None else control_mean
    if not relative:
        return b.mean - a.mean, b.variance / b.n + a.variance / a.n
    variance = b.variance / (base**2 * b.n) + a.variance * b.mean**2 / (base**4 * a.n)
    return (b.mean - a.mean) / base, variance


def welch_dof(a: Moments, b: Moments) -> float:
    """Welch-Satterthwaite degrees of freedom."""
    va, vb = a.variance / a.n, b.variance / b.n
    return (va + vb) ** 2 / (vb**2 / (b.n - 1) + va**2 / (a.n - 1))


def welch_t_test(
    a: Moments,
    b: Moments,
    *,
    relative: bool = True,
    sides: Sides = "two-sided",
    alpha: float = 0.05,
    test_value: float = 0.0,
    control_mean: float | None = None,
    method: str = "welch-t",
) -> TestResult:
    """Welch t-test of b against a on the absolute or relative (delta-method) lift scale."""
    inputs = {"n_a": a.n, "mean_a": a.mean, "var_a": a.variance, "n_b": b.n, "mean_b": b.mean, "var_b": b.variance}
    base = TestResult(method, relative=relative, sides=sides, alpha=alpha, inputs=inputs)
    error = degenerate(a, b, relative) or (constants.ZERO_CONTROL_MEAN if relative and control_mean == 0 else None)
    if error:
        return _with(base, error=error)
    estimate, variance = lift(a, b, relative, control_mean)
    if variance <= 0:
        return _with(base, estimate=estimate, error=constants.ZERO_VARIANCE)
    se, dof = math.sqrt(variance), welch_dof(a, b)
    t = (estimate - test_value) / se
    if sides == "two-sided":
        p, width = 2 * stats.t.sf(abs(t), dof), stats.t.ppf(1 - alpha / 2, dof) * se
        ci = (estimate - width, estimate + width)
    elif sides == "greater":
        p, ci = stats.t.sf(t, dof), (estimate - stats.t.ppf(1 - alpha, dof) * se, math.inf)
    else:
        p, ci = stats.t.cdf(t, dof), (-math.inf, estimate + stats.t.ppf(1 - alpha, dof) * se)
    ci = (float(ci[0]), float(ci[1]))
    return _with(base, estimate=estimate, stderr=se, ci=ci, p_value=float(p), statistic=t, dof=dof)


def two_proportion_test(
    x_a: int, n_a: int, x_b: int, n_b: int, *, sides: Sides = "two-sided", alpha: float = 0.05
) -> TestResult:
    """Two-proportion z-test on ``p_b - p_a`` (pooled z, unpooled CI)."""
    inputs: dict[str, float] = {"x_a": x_a, "n_a": n_a, "x_b": x_b, "n_b": n_b}
    base = TestResult("two-proportion-z", sides=sides, alpha=alpha, inputs=inputs)
    if n_a == 0 or n_b == 0:
        return _with(base, error=constants.EMPTY_ARM)
    p_a, p_b, pooled = x_a / n_a, x_b / n_b, (x_a + x_b) / (n_a + n_b)
    se_null = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    if se_null == 0:
        return _with(base, estimate=p_b - p_a, error=constants.ZERO_VARIANCE)
    estimate, z = p_b - p_a, (p_b - p_a) / se_null
    if sides == "two-sided":
        p, width = 2 * stats.norm.sf(abs(z)), stats.norm.ppf(1 - alpha / 2) * se
        ci = (estimate - width, estimate + width)
    elif sides == "greater":
        p, ci = stats.norm.sf(z), (estimate - stats.norm.ppf(1 - alpha) * se, math.inf)
    else:
        p, ci = stats.norm.cdf(z), (-math.inf, estimate + stats.norm.ppf(1 - alpha) * se)
    ci = (float(ci[0]), float(ci[1]))
    return _with(base, estimate=estimate, stderr=se, ci=ci, p_value=float(p), statistic=z, dof=math.inf)


def cuped_theta(a: Paired, b: Paired) -> float:
    """The CUPED coefficient cov(post, pre) / var(pre) over both arms pooled; 0 when undefined."""
    joint = a + b
    return joint.covariance / joint.pre.variance if joint.pre.variance > 0 else 0.0


def cuped_moments(stat: Paired, theta: float) -> Moments:
    """An arm's regression-adjusted mean and per-unit variance."""
    variance = stat.post.variance + theta**2 * stat.pre.variance - 2 * theta * stat.covariance
    return Moments(stat.n, stat.post.mean - theta * stat.pre.mean, max(variance, 0.0))


def cuped_t_test(
    a: Paired, b: Paired, *, relative: bool = True, sides: Sides = "two-sided", alpha: float = 0.05
) -> TestResult:
    """Welch t-test on CUPED-adjusted means (relative lift over the control's unadjusted mean)."""
    theta = cuped_theta(a, b)
    result = welch_t_test(
        cuped_moments(a, theta),
        cuped_moments(b, theta),
        relative=relative,
        sides=sides,
        alpha=alpha,
        control_mean=a.post.mean if relative else None,
        method="welch-t-cuped",
    )
    return _with(result, inputs=result.inputs | {"theta": theta, "unadjusted_mean_a": a.post.mean})


def _with(result: TestResult, **changes: object) -> TestResult:
    return replace(result, **changes)  # type: ignore[arg-type]
