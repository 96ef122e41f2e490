"""Welch t-tests, two-proportion tests and CUPED, pinned to scipy, statsmodels and gbstats' examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from evaluation import constants
from evaluation.moments import Paired, SampleMean
from evaluation.significance import Moments, cuped_t_test, two_proportion_test, welch_t_test


def moments_of(values: np.ndarray) -> Moments:
    return Moments.of(SampleMean(len(values), float(values.sum()), float((values**2).sum())))


RNG = np.random.default_rng(11)
A = RNG.normal(10.0, 2.0, 120)
B = RNG.normal(10.6, 3.0, 95)


def test_relative_lift_matches_the_gbstats_published_example() -> None:
    # gbstats' own two-sided t-test example: control mean 0.41 (sd 3.9, n 3407), treatment 0.70 (sd 6.2, n 3461)
    a, b = Moments(3407, 0.41, 3.9**2), Moments(3461, 0.70, 6.2**2)
    result = welch_t_test(a, b, relative=True)
    assert round(result.estimate, 5) == round(0.29 / 0.41, 5)
    assert round(result.stderr, 5) == 0.37879
    assert [round(x, 5) for x in result.ci] == [-0.03526, 1.44989]
    assert round(result.p_value, 5) == 0.06191


@pytest.mark.parametrize("sides", ["two-sided", "greater", "less"])
def test_absolute_lift_matches_scipy_welch(sides: str) -> None:
    result = welch_t_test(moments_of(A), moments_of(B), relative=False, sides=sides)  # type: ignore[arg-type]
    reference = stats.ttest_ind(B, A, equal_var=False, alternative=sides.replace("-", "-"))
    assert result.estimate == pytest.approx(B.mean() - A.mean(), abs=1e-9)
    assert result.statistic == pytest.approx(reference.statistic, abs=1e-7)
    assert result.dof == pytest.approx(reference.df, abs=1e-7)
    assert result.p_value == pytest.approx(reference.pvalue, abs=1e-7)
    low, high = reference.confidence_interval(0.95)
    assert result.ci[0] == pytest.approx(low, abs=1e-7) if math.isfinite(low) else result.ci[0] == -math.inf
    assert result.ci[1] == pytest.approx(high, abs=1e-7) if math.isfinite(high) else result.ci[1] == math.inf


def test_absolute_lift_pinned() -> None:
    result = welch_t_test(moments_of(A), moments_of(B), relative=False)
    # computed independently: scipy.stats.ttest_ind(B, A, equal_var=False) on the seeded samples
    reference = stats.ttest_ind(B, A, equal_var=False)
    assert round(result.p_value, 6) == round(float(reference.pvalue), 6)
    assert round(result.dof, 5) == round(float(reference.df), 5)


def test_relative_lift_delta_method_against_a_numpy_linearization() -> None:
    result = welch_t_test(moments_of(A), moments_of(B), relative=True)
    # the ratio mean_b / mean_a linearized: gradient (1/mu_a, -mu_b/mu_a**2) on independent means
    grad_b, grad_a = 1 / A.mean(), -B.mean() / A.mean() ** 2
    variance = grad_b**2 * B.var(ddof=1) / len(B) + grad_a**2 * A.var(ddof=1) / len(A)
    assert result.estimate == pytest.approx(B.mean() / A.mean() - 1, abs=1e-10)
    assert result.stderr == pytest.approx(math.sqrt(variance), abs=1e-10)


@pytest.mark.parametrize("sides", ["two-sided", "larger", "smaller"])
def test_two_proportions_match_statsmodels(sides: str) -> None:
    ours = two_proportion_test(120, 1000, 151, 1010, sides={"larger": "greater", "smaller": "less"}.get(sides, sides))  # type: ignore[arg-type]
    z, p = proportions_ztest([151, 120], [1010, 1000], alternative=sides)
    assert ours.statistic == pytest.approx(z, abs=1e-9)
    assert ours.p_value == pytest.approx(p, abs=1e-9)
    if sides == "two-sided":
        low, high = confint_proportions_2indep(151, 1010, 120, 1000, method="wald", compare="diff")
        assert ours.ci == pytest.approx((low, high), abs=1e-9)
        assert round(ours.p_value, 5) == 0.05281  # statsmodels proportions_ztest


def paired_of(post: np.ndarray, pre: np.ndarray) -> Paired:
    return Paired(
        SampleMean(len(post), float(post.sum()), float((post**2).sum())),
        SampleMean(len(pre), float(pre.sum()), float((pre**2).sum())),
        float((post * pre).sum()),
    )


def test_cuped_equals_welch_on_regression_adjusted_values() -> None:
    rng = np.random.default_rng(3)
    pre_a, pre_b = rng.normal(5, 1, 300), rng.normal(5, 1, 280)
    post_a = 2 + 0.8 * pre_a + rng.normal(0, 0.5, 300)
    post_b = 2.2 + 0.8 * pre_b + rng.normal(0, 0.5, 280)
    pre, post = np.concatenate([pre_a, pre_b]), np.concatenate([post_a, post_b])
    theta = np.cov(post, pre, ddof=1)[0, 1] / pre.var(ddof=1)
    adj_a, adj_b = post_a - theta * pre_a, post_b - theta * pre_b
    reference = stats.ttest_ind(adj_b, adj_a, equal_var=False)
    result = cuped_t_test(paired_of(post_a, pre_a), paired_of(post_b, pre_b), relative=False)
    assert result.inputs["theta"] == pytest.approx(theta, abs=1e-9)
    assert result.estimate == pytest.approx(adj_b.mean() - adj_a.mean(), abs=1e-9)
    assert result.p_value == pytest.approx(reference.pvalue, abs=1e-9)
    plain = welch_t_test(moments_of(post_a), moments_of(post_b), relative=False)
    assert result.stderr < 0.6 * plain.stderr  # the covariate explains most of the variance
    relative = cuped_t_test(paired_of(post_a, pre_a), paired_of(post_b, pre_b), relative=True)
    assert relative.estimate == pytest.approx((adj_b.mean() - adj_a.mean()) / post_a.mean(), abs=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "relative", "error"),
    [
        (Moments(0, 0, 0), Moments(10, 1, 1), False, constants.EMPTY_ARM),
        (Moments(1, 3, 0), Moments(10, 1, 1), False, constants.TOO_FEW_UNITS),
        (Moments(10, 3, 0), Moments(10, 3, 0), False, constants.ZERO_VARIANCE),
        (Moments(10, 0, 1), Moments(10, 1, 1), True, constants.ZERO_CONTROL_MEAN),
        (Moments(10, 2, 1), Moments(10, 0, 0), True, constants.ZERO_VARIANCE),
    ],
)
def test_degenerate_input_returns_an_error(a: Moments, b: Moments, relative: bool, error: str) -> None:
    result = welch_t_test(a, b, relative=relative)
    assert result.error == error
    assert (result.p_value, result.ci, result.significant) == (1.0, (0.0, 0.0), False)


def test_two_proportions_degenerate() -> None:
    assert two_proportion_test(0, 0, 3, 10).error == constants.EMPTY_ARM
    assert two_proportion_test(0, 10, 0, 10).error == constants.ZERO_VARIANCE
