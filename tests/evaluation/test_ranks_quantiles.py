"""Mann-Whitney ranks in SQL against scipy; gbstats quantile statistics and the bootstrap against numpy."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from experiment_data import synthetic_rows
from scipy import stats

from evaluation import constants
from evaluation.metrics import BUILT_IN
from evaluation.quantiles import (
    bootstrap_quantile_lift,
    bootstrap_quantiles,
    latency_sample,
    quantile_statistic,
    quantile_test,
)
from evaluation.ranks import mann_whitney
from feedback.store import DuckDBStore

METRICS = {m.name: m for m in BUILT_IN}


def unit_values(data: dict[str, list[Any]], arm: str, column: str) -> np.ndarray:
    totals: dict[str, list[float]] = {}
    for unit, a, value in zip(data["unit_id"], data["arm"], data[column], strict=True):
        if a == arm:
            totals.setdefault(unit, []).append(value)
    return np.array([sum(v) / len(v) for v in totals.values()])


@pytest.mark.parametrize(
    ("metric", "column"), [("latency_ms", "latency_ms"), ("completion_tokens", "completion_tokens")]
)
def test_mann_whitney_matches_scipy(experiment_store: Callable[..., DuckDBStore], metric: str, column: str) -> None:
    data = synthetic_rows(units=300, per_unit=1, lift=0.15, seed=21)
    store = experiment_store(data)
    result = mann_whitney(store, "exp-1", "ab-50", METRICS[metric], sample_per_arm=100_000, seed=0)
    a, b = unit_values(data, "champion", column), unit_values(data, "challenger", column)
    reference = stats.mannwhitneyu(b, a, method="asymptotic", use_continuity=True)
    assert (result.n_a, result.n_b) == (len(a), len(b))
    assert result.u == pytest.approx(reference.statistic, abs=1e-9)
    assert result.p_value == pytest.approx(reference.pvalue, abs=1e-10)
    assert result.effect == pytest.approx(reference.statistic / (len(a) * len(b)), abs=1e-12)


def test_mann_whitney_sample_is_bounded_and_empty_arm_is_an_error(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(units=300, seed=4))
    bounded = mann_whitney(store, "exp-1", "ab-50", METRICS["latency_ms"], sample_per_arm=50, seed=1)
    assert (bounded.n_a, bounded.n_b) == (50, 50)
    assert (
        mann_whitney(store, "exp-1", "ab-99", METRICS["latency_ms"], sample_per_arm=50, seed=1).error
        == constants.NO_SAMPLE
    )


def test_quantile_statistic_matches_numpy_order_statistics(experiment_store: Callable[..., DuckDBStore]) -> None:
    data = synthetic_rows(units=500, lift=0.2, seed=8)
    store = experiment_store(data)
    lat = {
        arm: np.array([v for a, v in zip(data["arm"], data["latency_ms"], strict=True) if a == arm])
        for arm in ("champion", "challenger")
    }
    z = stats.norm.ppf(0.975)
    stat = {}
    for arm, values in lat.items():
        stat[arm] = quantile_statistic(store, "exp-1", "ab-50", arm, 0.95, 0.05)
        n, half = len(values), z * math.sqrt(0.95 * 0.05 / len(values))
        q = np.quantile(values, [0.95, 0.95 - half, 0.95 + half], method="inverted_cdf")
        assert (stat[arm].n, stat[arm].q_hat, stat[arm].q_lower, stat[arm].q_upper) == (n, q[0], q[1], q[2])
        assert stat[arm].variance == pytest.approx((n - 1) * ((q[2] - q[1]) / (2 * z)) ** 2, rel=1e-12)
    result = quantile_test(stat["champion"], stat["challenger"])
    se = math.sqrt(
        stat["challenger"].variance / (stat["challenger"].n * stat["champion"].q_hat ** 2)
        + stat["champion"].variance * stat["challenger"].q_hat ** 2 / (stat["champion"].q_hat ** 4 * stat["champion"].n)
    )
    assert result.estimate == pytest.approx(stat["challenger"].q_hat / stat["champion"].q_hat - 1, abs=1e-12)
    assert result.stderr == pytest.approx(se, rel=1e-12)
    assert result.method == "quantile-p95"


def test_quantile_too_few_values_is_an_error() -> None:
    from evaluation.quantiles import QuantileStatistic

    tiny = QuantileStatistic(n=10, nu=0.99, q_hat=5, q_lower=4, q_upper=6)
    assert tiny.variance == 0.0
    assert quantile_test(tiny, tiny).error == constants.ZERO_VARIANCE


def test_order_statistic_bootstrap_matches_plain_resampling() -> None:
    rng = np.random.default_rng(17)
    values = rng.lognormal(5, 0.5, 300)
    direct = bootstrap_quantiles(values, 0.9, 40_000, np.random.default_rng(1))
    plain = np.quantile(values[rng.integers(0, 300, (40_000, 300))], 0.9, axis=1, method="inverted_cdf")
    # the same distribution: every sample value is hit with the same frequency (Monte Carlo error ~0.003)
    support = np.unique(np.concatenate([direct, plain]))
    freq_direct = np.searchsorted(np.sort(direct), support, side="right") / len(direct)
    freq_plain = np.searchsorted(np.sort(plain), support, side="right") / len(plain)
    assert np.abs(freq_direct - freq_plain).max() < 0.015
    assert stats.ks_2samp(direct, plain).pvalue > 0.001


def test_bootstrap_ci(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(units=200, lift=0.3, seed=2))
    sample = latency_sample(store, "exp-1", "ab-50", per_arm=250, seed=3)
    a, b = sample["champion"], sample["challenger"]
    assert (len(a), len(b)) == (250, 250)  # the cap, below both arms' sizes
    result = bootstrap_quantile_lift(a, b, 0.5, resamples=2000, seed=5)
    assert result.ci[0] < result.estimate < result.ci[1]
    assert result == bootstrap_quantile_lift(a, b, 0.5, resamples=2000, seed=5)  # seeded: reproducible
    assert result.estimate == pytest.approx(np.median(b) / np.median(a) - 1, rel=0.05)
    assert bootstrap_quantile_lift(a, np.array([]), 0.5).error == constants.NO_SAMPLE
