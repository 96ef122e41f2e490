"""Bayesian lift: chance to win, risks and credible interval against numerical integration."""

from __future__ import annotations

import math

import pytest
from scipy import integrate, stats

from evaluation import constants
from evaluation.bayesian import bayesian_test
from evaluation.significance import Moments

A, B = Moments(1000, 10.0, 9.0), Moments(1000, 10.3, 12.0)


def reference(mean: float, sd: float) -> tuple[float, float, float]:
    pdf = stats.norm(mean, sd).pdf
    loss_challenger = integrate.quad(lambda x: -x * pdf(x), -math.inf, 0)[0]
    loss_champion = integrate.quad(lambda x: x * pdf(x), 0, math.inf)[0]
    return 1 - stats.norm.cdf(0, mean, sd), loss_challenger, loss_champion


def test_flat_prior_relative() -> None:
    result = bayesian_test(A, B, relative=True)
    mean = 0.03
    sd = math.sqrt(12.0 / (100 * 1000) + 9.0 * 10.3**2 / (10**4 * 1000))
    ctw, risk_b, risk_a = reference(mean, sd)
    assert (result.mean, result.stddev) == (pytest.approx(mean, abs=1e-12), pytest.approx(sd, abs=1e-12))
    assert round(result.chance_to_win, 6) == round(ctw, 6)
    assert round(result.risk_challenger, 7) == round(risk_b, 7)
    assert round(result.risk_champion, 7) == round(risk_a, 7)
    assert result.ci == pytest.approx(tuple(stats.norm.ppf([0.025, 0.975], mean, sd)), abs=1e-10)
    assert round(result.chance_to_win, 5) == 0.97951  # 1 - Phi(0.03 / sd), sd = 0.0146793


def test_normal_prior_shrinks_toward_its_mean() -> None:
    result = bayesian_test(A, B, relative=True, prior_mean=0.0, prior_stddev=0.01)
    v = 12.0 / (100 * 1000) + 9.0 * 10.3**2 / (10**4 * 1000)
    precision = 1 / v + 1 / 0.01**2
    assert result.mean == pytest.approx(0.03 / v / precision, abs=1e-12)
    assert result.stddev == pytest.approx(math.sqrt(1 / precision), abs=1e-12)


def test_lower_is_better_flips_the_winner() -> None:
    higher = bayesian_test(A, B, relative=False)
    lower = bayesian_test(A, B, relative=False, higher_is_better=False)
    assert lower.chance_to_win == pytest.approx(1 - higher.chance_to_win, abs=1e-12)
    assert lower.risk_challenger == pytest.approx(higher.risk_champion, abs=1e-12)


def test_degenerate() -> None:
    result = bayesian_test(Moments(0, 0, 0), B)
    assert (result.error, result.chance_to_win) == (constants.EMPTY_ARM, 0.5)
    assert bayesian_test(Moments(5, 1, 0), Moments(5, 1, 0)).error == constants.ZERO_VARIANCE
