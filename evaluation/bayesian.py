"""Bayesian comparison of the lift: chance to win, expected loss (risk), credible interval.

Definitions (as in gbstats' effect-based Bayesian test): the data give a normal likelihood for
the lift (absolute or relative, estimate and variance from ``evaluation.significance.lift``).

- Flat prior: the posterior is ``N(estimate, variance)``.
- Normal prior ``N(m0, s0**2)``: posterior precision ``1/variance + 1/s0**2``, posterior mean
  ``(estimate/variance + m0/s0**2) / precision``.
- Chance to win ``P(lift > 0)`` (``P(lift < 0)`` when lower is better).
- Risk (expected loss) of choosing the challenger ``-E[min(lift, 0)] = -P(lift<0) E[lift | lift<0]``,
  of keeping the champion ``E[max(lift, 0)] = P(lift>0) E[lift | lift>0]`` (truncated normal
  means; signs flipped when lower is better).
- Credible interval: the posterior's ``alpha/2`` and ``1 - alpha/2`` quantiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scipy import stats

from evaluation import constants
from evaluation.significance import Moments, degenerate, lift


@dataclass(frozen=True)
class BayesianResult:
    """The posterior of the lift and what it implies."""

    mean: float = 0.0
    stddev: float = 0.0
    chance_to_win: float = 0.5
    risk_challenger: float = 0.0
    risk_champion: float = 0.0
    ci: tuple[float, float] = (0.0, 0.0)
    relative: bool = True
    prior: str = "flat"
    error: str | None = None
    inputs: dict[str, float] = field(default_factory=dict)


def posterior(
    estimate: float, variance: float, prior_mean: float | None, prior_stddev: float | None
) -> tuple[float, float]:
    """Posterior mean and variance of the lift under a flat (None) or normal prior."""
    if prior_mean is None or prior_stddev is None:
        return estimate, variance
    precision = 1 / variance + 1 / prior_stddev**2
    return (estimate / variance + prior_mean / prior_stddev**2) / precision, 1 / precision


def risks(mean: float, stddev: float) -> tuple[float, float]:
    """Expected loss of choosing the challenger and of keeping the champion (higher is better)."""
    p_win = stats.norm.sf(0, mean, stddev)
    low = stats.truncnorm.mean(-math.inf, (0 - mean) / stddev, loc=mean, scale=stddev)
    high = stats.truncnorm.mean((0 - mean) / stddev, math.inf, loc=mean, scale=stddev)
    return float(-(1 - p_win) * low), float(p_win * high)


def bayesian_test(
    a: Moments,
    b: Moments,
    *,
    relative: bool = True,
    alpha: float = 0.05,
    prior_mean: float | None = None,
    prior_stddev: float | None = None,
    higher_is_better: bool = True,
) -> BayesianResult:
    """Posterior of b's lift over a with chance to win, risks and credible interval."""
    prior = "flat" if prior_mean is None else f"normal({prior_mean:g}, {prior_stddev:g})"
    inputs = {"n_a": a.n, "mean_a": a.mean, "var_a": a.variance, "n_b": b.n, "mean_b": b.mean, "var_b": b.variance}
    error = degenerate(a, b, relative)
    if error:
        return BayesianResult(relative=relative, prior=prior, error=error, inputs=inputs)
    estimate, variance = lift(a, b, relative)
    if variance <= 0:
        return BayesianResult(relative=relative, prior=prior, error=constants.ZERO_VARIANCE, inputs=inputs)
    mean, var = posterior(estimate, variance, prior_mean, prior_stddev)
    sd = math.sqrt(var)
    sign = 1 if higher_is_better else -1
    risk_challenger, risk_champion = risks(sign * mean, sd)
    ci = stats.norm.ppf([alpha / 2, 1 - alpha / 2], mean, sd)
    return BayesianResult(
        mean=mean,
        stddev=sd,
        chance_to_win=float(stats.norm.sf(0, sign * mean, sd)),
        risk_challenger=risk_challenger,
        risk_champion=risk_champion,
        ci=(float(ci[0]), float(ci[1])),
        relative=relative,
        prior=prior,
        inputs=inputs,
    )
