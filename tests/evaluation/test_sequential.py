"""Asymptotic confidence sequences: pinned to the paper's margin and safe under hourly peeking (A/A)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from evaluation.config import ExperimentSettings
from evaluation.metrics import BUILT_IN
from evaluation.moments import Ratio, SampleMean
from evaluation.report import metric_result
from evaluation.sequential import ConfidenceSequence, halfwidth, one_sided_halfwidth, sequential_rho
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


def a_a_paths(sims: int = 1000, hours: int = 168, per_hour: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hourly A/A paths: the difference in means, its variance and the units per arm after each hour."""
    rng = np.random.default_rng(2026)
    # hourly sums and sums of squares of `per_hour` N(0, 1) values per arm, drawn as sufficient statistics
    sums = rng.normal(0, math.sqrt(per_hour), (2, sims, hours)).cumsum(axis=2)
    squares = rng.chisquare(per_hour, (2, sims, hours)).cumsum(axis=2)
    n = per_hour * np.arange(1, hours + 1, dtype=np.float64)
    means = sums / n
    variances = (squares - sums**2 / n) / (n - 1)
    return means[1] - means[0], variances[1] / n + variances[0] / n, n


def a_a_peeking(alpha: float = 0.05) -> tuple[float, float]:
    """FPR of naive repeated z-tests and of the confidence sequence when peeking every hour (A/A)."""
    diff, var_diff, n = a_a_paths()
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


def test_one_sided_sequence_follows_gbstats_definitions() -> None:
    a, b = Moments(4000, 10.0, 9.0), Moments(4000, 10.2, 9.0)
    greater = ConfidenceSequence(alpha=0.05, tuning=5000, sides="greater").test(a, b, relative=False)
    # gbstats' one-sided sequence: rho at 2 alpha, half-width with ln(1 + sqrt(N rho^2 + 1) / (2 alpha))
    n, s2 = 8000, 9.0 / 4000 * 2 * 8000
    rho2 = (-2 * math.log(0.1) + math.log(-2 * math.log(0.1) + 1)) / 5000
    width = math.sqrt(s2 * 2 * (n * rho2 + 1) / (n * n * rho2) * math.log(1 + math.sqrt(n * rho2 + 1) / 0.1))
    assert greater.ci[0] == pytest.approx(0.2 - width, rel=1e-9)
    assert greater.ci[1] == math.inf
    assert round(greater.ci[0], 6) == 0.012986
    # the p-value is the alpha at which the lower bound reaches 0 (rho held fixed), found numerically
    root = brentq(lambda x: 0.2 - float(one_sided_halfwidth(s2, n, x, rho2)), 1e-5, 0.4999, xtol=1e-15)
    assert greater.p_value == pytest.approx(root, rel=1e-9)
    assert round(greater.p_value, 6) == 0.029723
    assert greater.sides == "greater"
    assert greater.significant
    # "less" mirrors "greater"; an estimate on the other side of zero gets gbstats' bound 0.4999
    less = ConfidenceSequence(alpha=0.05, tuning=5000, sides="less").test(b, a, relative=False)
    assert less.ci[0] == -math.inf
    assert less.ci[1] == pytest.approx(-greater.ci[0], rel=1e-12)
    assert less.p_value == pytest.approx(greater.p_value, rel=1e-12)
    assert ConfidenceSequence(sides="less").test(a, b, relative=False).p_value == 0.4999
    relative = ConfidenceSequence(alpha=0.05, tuning=5000, sides="greater").test(a, b, relative=True)
    assert round(relative.ci[0], 6) == 0.001111
    assert round(relative.p_value, 6) == 0.03225
    # one-sided is tighter than two-sided on its side
    two_sided = ConfidenceSequence(alpha=0.05, tuning=5000).test(a, b, relative=False)
    assert greater.ci[0] > two_sided.ci[0]


def test_one_sided_a_a_simulation_peeking_hourly() -> None:
    diff, var_diff, n = a_a_paths()
    rho2 = sequential_rho(0.1, 5000) ** 2
    naive = diff / np.sqrt(var_diff) > 1.6448536269514722
    seq = diff > one_sided_halfwidth(var_diff * 2 * n, 2 * n, 0.05, rho2)
    assert float(naive.any(axis=1).mean()) > 0.3
    assert float(seq.any(axis=1).mean()) <= 0.05


def test_report_sequences_take_the_sides_setting() -> None:
    a = Ratio(4000, SampleMean(4000, 40_000.0, 436_000.0), SampleMean(4000, 4000.0, 4000.0), 40_000.0)
    b = Ratio(4000, SampleMean(4000, 40_800.0, 452_160.0), SampleMean(4000, 4000.0, 4000.0), 40_800.0)
    result = metric_result(BUILT_IN[5], a, b, 7.0, ExperimentSettings(sides="less"))
    expected = ConfidenceSequence(0.05, 5000, "less").test(Moments.of(a), Moments.of(b), relative=True)
    assert result.sequential_relative == expected
    assert result.sequential_relative.ci[0] == -math.inf
    assert result.sequential_absolute.sides == "less"
