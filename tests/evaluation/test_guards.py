"""SRM, multiple-testing corrections and power, pinned to scipy and statsmodels."""

from __future__ import annotations

import math

import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower

from evaluation.guards import below_minimum, benjamini_hochberg, check_srm, holm, power_analysis

P = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04]


def test_srm_matches_scipy_chisquare() -> None:
    result = check_srm({"champion": 9_400, "challenger": 600}, {"champion": 0.95, "challenger": 0.05})
    reference = stats.chisquare([9_400, 600], [9_500, 500])
    assert result.chi2 == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert round(result.chi2, 5) == 21.05263
    assert result.mismatch


def test_srm_matches_the_gbstats_published_example() -> None:
    result = check_srm({"champion": 1000, "challenger": 1200}, {"champion": 0.5, "challenger": 0.5})
    assert round(result.p_value, 9) == 0.000020079


def test_srm_passes_a_fair_split_and_handles_empty() -> None:
    assert not check_srm({"champion": 905, "challenger": 95}, {"champion": 0.9, "challenger": 0.1}).mismatch
    assert check_srm({}, {"champion": 0.9, "challenger": 0.1}).p_value == 1.0


def test_holm_and_bh_match_statsmodels() -> None:
    assert holm(P) == pytest.approx(list(multipletests(P, method="holm")[1]), abs=1e-12)
    assert benjamini_hochberg(P) == pytest.approx(list(multipletests(P, method="fdr_bh")[1]), abs=1e-12)
    assert holm([]) == []


def test_power_and_mde_match_statsmodels() -> None:
    # equal arms of n units, per-unit sd 1 on a control mean of 1: the relative lift's se is sqrt(2 / n)
    n = 2000
    se = math.sqrt(2 / n)
    result = power_analysis(se, 2 * n, days_elapsed=4, target_mde=0.05, alpha=0.05, power=0.8)
    assert result.power == pytest.approx(NormalIndPower().power(0.05, nobs1=n, alpha=0.05), abs=1e-9)
    mde = NormalIndPower().solve_power(nobs1=n, alpha=0.05, power=0.8)
    assert result.mde == pytest.approx(mde, rel=1e-6)
    # units needed scale with (mde / target)**2; traffic is 1000 units a day
    assert result.days_to_target == pytest.approx((2 * n * (result.mde / 0.05) ** 2 - 2 * n) / 1000, rel=1e-12)


def test_power_degenerate_and_minimum() -> None:
    assert power_analysis(0.0, 0, 1, target_mde=0.05).mde == math.inf
    assert below_minimum({"champion": 500, "challenger": 40}, 100) == ["challenger"]
