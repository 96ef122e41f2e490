"""CUPED's SQL inputs against numpy on the same rows, with a real pre-period in the DuckDB file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from experiment_data import synthetic_rows
from scipy import stats

from evaluation import constants
from evaluation.cuped import cuped_statistics, cuped_statistics_of, cuped_test, cuped_tests
from evaluation.metrics import BUILT_IN
from evaluation.moments import Paired
from feedback.store import DuckDBStore

LATENCY = next(m for m in BUILT_IN if m.name == "latency_ms")


def unit_means(data: dict[str, list[Any]]) -> dict[str, tuple[str, float]]:
    values: dict[str, list[float]] = {}
    arms = {}
    for unit, arm, v in zip(data["unit_id"], data["arm"], data["latency_ms"], strict=True):
        values.setdefault(unit, []).append(v)
        arms[unit] = arm
    return {u: (arms[u], float(np.mean(v))) for u, v in values.items()}


def test_cuped_statistics_match_numpy(experiment_store: Callable[..., DuckDBStore]) -> None:
    pre_data = synthetic_rows(experiment="older", phase="champion-only", units=300, seed=1, day=0)
    post_data = synthetic_rows(phase="ab-50", units=300, seed=2, day=7)
    store = experiment_store(pre_data, post_data)
    pre = {u: v for u, (_, v) in unit_means(pre_data).items()}
    post = unit_means(post_data)
    got = cuped_statistics(store, "exp-1", "ab-50", LATENCY)
    for arm in ("champion", "challenger"):
        y = np.array([v for u, (a, v) in post.items() if a == arm])
        x = np.array([pre.get(u, 0.0) for u, (a, _) in post.items() if a == arm])
        assert got[arm].n == len(y)
        assert got[arm].post.sum == pytest.approx(y.sum(), rel=1e-12)
        assert got[arm].pre.sum_squares == pytest.approx((x**2).sum(), rel=1e-12)
        assert got[arm].sum_product == pytest.approx((x * y).sum(), rel=1e-12)
    result = cuped_test(store, "exp-1", "ab-50", LATENCY, relative=False)
    ya = np.array([v for u, (a, v) in post.items() if a == "champion"])
    yb = np.array([v for u, (a, v) in post.items() if a == "challenger"])
    xa = np.array([pre.get(u, 0.0) for u, (a, _) in post.items() if a == "champion"])
    xb = np.array([pre.get(u, 0.0) for u, (a, _) in post.items() if a == "challenger"])
    x, y = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    theta = np.cov(y, x, ddof=1)[0, 1] / x.var(ddof=1)
    reference = stats.ttest_ind(yb - theta * xb, ya - theta * xa, equal_var=False)
    assert result.inputs["theta"] == pytest.approx(theta, rel=1e-9)
    assert result.p_value == pytest.approx(reference.pvalue, abs=1e-9)
    relative = cuped_test(store, "exp-1", "ab-50", LATENCY)
    adjusted_diff = (yb - theta * xb).mean() - (ya - theta * xa).mean()
    assert relative.estimate == pytest.approx(adjusted_diff / ya.mean(), rel=1e-9)


def test_cuped_without_data_is_an_error(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(units=20))
    assert cuped_test(store, "exp-1", "ab-99", LATENCY).error == constants.EMPTY_ARM


def paired_sums(stat: Paired) -> list[float]:
    return [stat.post.sum, stat.post.sum_squares, stat.pre.sum, stat.pre.sum_squares, stat.sum_product]


def test_one_pass_for_every_metric_equals_one_metric_at_a_time(experiment_store: Callable[..., DuckDBStore]) -> None:
    pre_data = synthetic_rows(experiment="older", phase="champion-only", units=200, seed=5, day=0)
    store = experiment_store(pre_data, synthetic_rows(phase="ab-50", units=200, seed=6, day=7))
    together, tests = (
        cuped_statistics_of(store, "exp-1", "ab-50", BUILT_IN),
        cuped_tests(store, "exp-1", "ab-50", BUILT_IN),
    )
    assert list(tests) == [m.name for m in BUILT_IN]
    for metric in BUILT_IN:
        for arm, alone in cuped_statistics(store, "exp-1", "ab-50", metric).items():
            both = together[metric.name][arm]
            assert both.n == alone.n
            # the same sums, added in another order
            assert paired_sums(both) == pytest.approx(paired_sums(alone), rel=1e-12, abs=1e-12)
        single = cuped_test(store, "exp-1", "ab-50", metric)
        assert (tests[metric.name].estimate, tests[metric.name].p_value) == pytest.approx(
            (single.estimate, single.p_value), rel=1e-9, abs=1e-12
        )
    rating = cuped_statistics(store, "exp-1", "ab-50", next(m for m in BUILT_IN if m.name == "mean_rating"))
    assert rating["champion"].n < cuped_statistics(store, "exp-1", "ab-50", LATENCY)["champion"].n  # unrated left out
