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
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from evaluation import constants
from evaluation.significance import Moments, TestResult, degenerate, lift


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


class ConfidenceSequence:
    """Two-sided asymptotic confidence sequence on the lift, valid at every peek."""

    def __init__(self, alpha: float = 0.05, tuning: float = 5000.0) -> None:
        self.alpha, self.tuning = alpha, tuning

    def test(self, a: Moments, b: Moments, *, relative: bool = True) -> TestResult:
        """The sequence's interval and always-valid p-value for the current data."""
        inputs = {"n_a": a.n, "mean_a": a.mean, "var_a": a.variance, "n_b": b.n, "mean_b": b.mean, "var_b": b.variance}
        base = TestResult("asymptotic-cs", relative=relative, alpha=self.alpha, inputs=inputs | {"tuning": self.tuning})
        error = degenerate(a, b, relative)
        if error:
            return replace(base, error=error)
        estimate, variance = lift(a, b, relative)
        if variance <= 0:
            return replace(base, estimate=estimate, error=constants.ZERO_VARIANCE)
        n = a.n + b.n
        width = float(halfwidth(variance * n, n, self.alpha, self.tuning))
        p = always_valid_p_value(estimate, variance, n, self.alpha, self.tuning)
        return replace(
            base, estimate=estimate, stderr=math.sqrt(variance), ci=(estimate - width, estimate + width), p_value=p
        )
