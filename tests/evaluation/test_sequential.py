"""Asymptotic confidence sequences: pinned to the paper's margin and safe under hourly peeking (A/A)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.moments import SampleMean
from evaluation.sequential import ConfidenceSequence, halfwidth, sequential_rho
from evaluation.significance import Moments


def paper_margin(t: float, rho2: float, alpha: float) -> float:
    # the conjugate-mixture boundary in the form of Waudby-Smith et al.'s reference R code
    return math.sqrt(2 * (t * rho2 + 1) * math.log(math.sqrt(t * rho2 + 1) / alpha) / (t**2 * rho2))


def test_rho_and_halfwidth_against_the_paper() -> None:
    alpha, tuning = 0.05, 5000.0
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning
    assert sequential_rho(alpha, tuning) ** 2 == pytest.approx(rho2, rel=1e-12)
    for n in (10, 5000, 100_000):
        assert float(halfwidth(4.0, n, alpha, tuning)) == pytest.approx(2.0 * paper_margin(n, rho2, alpha), rel=1e-12)
    assert round(float(halfwidth(1.0, 5000, alpha, tuning)), 6) == round(paper_margin(5000, rho2, alpha), 6)


def test_sequence_is_wider_than_the_fixed_interval_and_p_value_is_consistent() -> None:
    a, b = Moments(4000, 10.0, 9.0), Moments(4000, 10.2, 9.0)
    result = ConfidenceSequence(alpha=0.05, tuning=5000).test(a, b, relative=False)
    se = math.sqrt(9.0 / 4000 * 2)
    assert result.estimate == pytest.approx(0.2, abs=1e-12)
    assert result.ci[1] - 0.2 > 1.96 * se
    # the CS excludes 0 exactly when the always-valid p-value is below alpha
    assert (result.ci[0] > 0) == (result.p_value < 0.05)
    rho2, n = sequential_rho(0.05, 5000) ** 2, 8000
    t2 = 0.2**2 * n / se**2
    assert result.p_value == pytest.approx(
        min(1, math.sqrt(n * rho2 + 1) * math.exp(-rho2 * t2 / (2 * (n * rho2 + 1)))), rel=1e-9
    )


def a_a_peeking(sims: int = 1000, hours: int = 168, per_hour: int = 30, alpha: float = 0.05) -> tuple[float, float]:
    """FPR of naive repeated z-tests and of the confidence sequence when peeking every hour (A/A)."""
    rng = np.random.default_rng(2026)
    # hourly sums and sums of squares of `per_hour` N(0, 1) values per arm, drawn as sufficient statistics
    sums = rng.normal(0, math.sqrt(per_hour), (2, sims, hours)).cumsum(axis=2)
    squares = rng.chisquare(per_hour, (2, sims, hours)).cumsum(axis=2)
    n = per_hour * np.arange(1, hours + 1, dtype=np.float64)
    means = sums / n
    variances = (squares - sums**2 / n) / (n - 1)
    diff = means[1] - means[0]
    var_diff = variances[1] / n + variances[0] / n
    naive = np.abs(diff) / np.sqrt(var_diff) > 1.959963984540054
    seq = np.abs(diff) > halfwidth(var_diff * 2 * n, 2 * n, alpha, tuning=5000)
    return float(naive.any(axis=1).mean()), float(seq.any(axis=1).mean())


def test_a_a_simulation_peeking_hourly() -> None:
    naive, sequential = a_a_peeking()
    assert naive > 0.2  # repeated fixed-horizon tests find "effects" in a third of A/A tests
    assert sequential <= 0.05


def test_degenerate() -> None:
    assert ConfidenceSequence().test(Moments(1, 1, 0), Moments(3, 1, 1)).error is not None


def test_matches_the_gbstats_published_sequential_example() -> None:
    # gbstats' own sequential test example (tuning parameter 1000) on sufficient statistics
    a = Moments.of(SampleMean(3000, 1396.87, 52377.9767))
    b = Moments.of(SampleMean(3461, 2422.7, 134698.29))
    result = ConfidenceSequence(alpha=0.05, tuning=1000).test(a, b, relative=True)
    assert round(result.estimate, 5) == 0.50336
    assert round(result.stderr, 5) == 0.33341
    assert [round(x, 5) for x in result.ci] == [-0.55844, 1.56516]
    assert result.p_value == 1.0
