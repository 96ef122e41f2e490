"""Always-valid inference under continuous peeking: asymptotic confidence sequences.

Definitions (Waudby-Smith et al., "Time-uniform central limit theory and asymptotic confidence
sequences", as gbstats applies them to the lift): with ``N`` units in both arms, the lift's
estimate ``theta`` and its variance ``V`` (Welch/delta method), the per-unit variance is
``s2 = V N``. The tuning parameter ``N*`` (units where the sequence is tightest) sets

    rho = sqrt((-2 ln(alpha) + ln(-2 ln(alpha) + 1)) / N*)

and the half-width of the two-sided sequence is

    sqrt(s2) * sqrt(2 (N rho**2 + 1) ln(sqrt(N rho**2 + 1) / alpha) / (N**2 rho**2)).

The always-valid p-value is ``min(1, 1 / e)`` with the e-value
``e = exp(rho**2 t**2 / (2 (N rho**2 + 1))) / sqrt(N rho**2 + 1)`` and ``t**2 = theta**2 N / V``
(the smallest alpha whose sequence excludes 0).

One-sided sequences (``sides`` "greater" or "less", as gbstats' ``SequentialOneSidedTreatment
GreaterTTest`` and ``...LesserTTest``) use ``rho`` computed at ``2 alpha`` and the half-width

    sqrt(s2 * 2 (N rho**2 + 1) / (N rho)**2 * ln(1 + sqrt(N rho**2 + 1) / (2 alpha)))

on one side only: ``(theta - h, inf)`` for "greater", ``(-inf, theta + h)`` for "less". The
p-value is the alpha at which that bound reaches 0 (``rho`` held fixed); gbstats finds it by
bisection over [1e-5, 0.4999], and this closed form is clipped to the same range (an estimate
on the other side of zero gets 0.4999):

    alpha = sqrt(N rho**2 + 1) / (2 (exp(theta**2 (N rho)**2 / (2 s2 (N rho**2 + 1))) - 1))
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from evaluation import constants
from evaluation.significance import Moments, Sides, TestResult, degenerate, lift

ONE_SIDED_P_RANGE = (1e-5, 0.4999)  # gbstats' bisection bounds for one-sided sequential p-values


def sequential_rho(alpha: float, tuning: float) -> float:
    """The mixture parameter rho that makes the sequence tightest near ``tuning`` units."""
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning)


def halfwidth(
    s2: NDArray[np.float64] | float, n: NDArray[np.float64] | float, alpha: float, tuning: float
) -> NDArray[np.float64]:
    """Half-width of the confidence sequence for per-unit variance ``s2`` after ``n`` units (vectorized)."""
    rho2 = sequential_rho(alpha, tuning) ** 2
    nr = np.asarray(n, dtype=np.float64) * rho2 + 1
    width: NDArray[np.float64] = np.sqrt(np.asarray(s2, dtype=np.float64)) * np.sqrt(
        2 * nr * np.log(np.sqrt(nr) / alpha) / (np.asarray(n, dtype=np.float64) ** 2 * rho2)
    )
    return width


def always_valid_p_value(estimate: float, variance: float, n: int, alpha: float, tuning: float) -> float:
    """The always-valid two-sided p-value (inverse e-value, capped at 1)."""
    rho2 = sequential_rho(alpha, tuning) ** 2
    t2 = estimate**2 * n / variance
    log_e = rho2 * t2 / (2 * (n * rho2 + 1)) - 0.5 * math.log(n * rho2 + 1)
    return min(1.0, math.exp(-log_e))


def one_sided_halfwidth(
    s2: NDArray[np.float64] | float, n: NDArray[np.float64] | float, alpha: float, rho2: float
) -> NDArray[np.float64]:
    """Half-width of the one-sided sequence for per-unit variance ``s2`` after ``n`` units (vectorized)."""
    units = np.asarray(n, dtype=np.float64)
    nr = units * rho2 + 1
    width: NDArray[np.float64] = np.sqrt(
        np.asarray(s2, dtype=np.float64) * 2 * nr / (units**2 * rho2) * np.log(1 + np.sqrt(nr) / (2 * alpha))
    )
    return width


def one_sided_p_value(estimate: float, s2: float, n: int, rho2: float, sides: Sides) -> float:
    """The alpha at which the one-sided bound reaches 0, clipped to gbstats' search range."""
    low, high = ONE_SIDED_P_RANGE
    favoured = estimate > 0 if sides == "greater" else estimate < 0
    if not favoured:
        return high
    nr = n * rho2 + 1
    exponent = estimate**2 * n**2 * rho2 / (2 * s2 * nr)
    if exponent > 700:  # exp overflows: the bound clears 0 at any alpha in range
        return low
    return min(high, max(low, math.sqrt(nr) / (2 * math.expm1(exponent))))


class ConfidenceSequence:
    """Asymptotic confidence sequence on the lift (two- or one-sided), valid at every peek."""

    def __init__(self, alpha: float = 0.05, tuning: float = 5000.0, sides: Sides = "two-sided") -> None:
        self.alpha, self.tuning, self.sides = alpha, tuning, sides

    def test(self, a: Moments, b: Moments, *, relative: bool = True) -> TestResult:
        """The sequence's interval and always-valid p-value for the current data."""
        inputs = {"n_a": a.n, "mean_a": a.mean, "var_a": a.variance, "n_b": b.n, "mean_b": b.mean, "var_b": b.variance}
        base = TestResult(
            "asymptotic-cs", relative=relative, sides=self.sides, alpha=self.alpha,
            inputs=inputs | {"tuning": self.tuning},
        )  # fmt: skip
        error = degenerate(a, b, relative)
        if error:
            return replace(base, error=error)
        estimate, variance = lift(a, b, relative)
        if variance <= 0:
            return replace(base, estimate=estimate, error=constants.ZERO_VARIANCE)
        n = a.n + b.n
        if self.sides != "two-sided":
            return self._one_sided(base, estimate, variance, n)
        width = float(halfwidth(variance * n, n, self.alpha, self.tuning))
        p = always_valid_p_value(estimate, variance, n, self.alpha, self.tuning)
        return replace(
            base, estimate=estimate, stderr=math.sqrt(variance), ci=(estimate - width, estimate + width), p_value=p
        )

    def _one_sided(self, base: TestResult, estimate: float, variance: float, n: int) -> TestResult:
        rho2 = sequential_rho(2 * self.alpha, self.tuning) ** 2
        width = float(one_sided_halfwidth(variance * n, n, self.alpha, rho2))
        ci = (estimate - width, math.inf) if self.sides == "greater" else (-math.inf, estimate + width)
        p = one_sided_p_value(estimate, variance * n, n, rho2, self.sides)
        return replace(base, estimate=estimate, stderr=math.sqrt(variance), ci=ci, p_value=p)
