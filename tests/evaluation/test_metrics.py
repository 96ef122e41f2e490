"""Metric SQL on a real DuckDB file: per-unit sufficient statistics equal numpy on the same rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from experiment_data import synthetic_rows

from evaluation.config import CustomMetric, ExperimentSettings
from evaluation.errors import InvalidSplitError, UnknownExperimentError, UnknownMetricError
from evaluation.metrics import (
    BUILT_IN,
    FEEDBACK_CTE,
    Metric,
    metric_moments,
    parse_split,
    phase_split,
    select_metrics,
)
from feedback.store import DuckDBStore


def per_unit_latency(data: dict[str, list[Any]], arm: str) -> tuple[np.ndarray, np.ndarray]:
    totals: dict[str, list[float]] = {}
    for unit, a, latency in zip(data["unit_id"], data["arm"], data["latency_ms"], strict=True):
        if a == arm:
            totals.setdefault(unit, []).append(latency)
    return np.array([sum(v) for v in totals.values()]), np.array([len(v) for v in totals.values()], dtype=float)


def test_ratio_moments_match_numpy_delta_method(experiment_store: Callable[..., DuckDBStore]) -> None:
    data = synthetic_rows(units=300, seed=5)
    store = experiment_store(data)
    stats = metric_moments(store, "exp-1", BUILT_IN)["ab-50"]
    for arm in ("champion", "challenger"):
        m, d = per_unit_latency(data, arm)
        ratio = stats[arm]["latency_ms"]
        cov = np.cov(m, d, ddof=1)
        mu_m, mu_d = m.mean(), d.mean()
        expected = cov[0, 0] / mu_d**2 + cov[1, 1] * mu_m**2 / mu_d**4 - 2 * cov[0, 1] * mu_m / mu_d**3
        assert ratio.n == len(m)
        assert ratio.mean == pytest.approx(m.sum() / d.sum(), rel=1e-12)
        assert ratio.variance == pytest.approx(expected, rel=1e-9)


def test_feedback_and_error_metrics_count_what_was_stored(experiment_store: Callable[..., DuckDBStore]) -> None:
    data = synthetic_rows(units=200, seed=9)
    store = experiment_store(data)
    stats = metric_moments(store, "exp-1", BUILT_IN)["ab-50"]
    arm_of = dict(zip(data["interaction_id"], data["arm"], strict=True))
    ups = sum(
        1
        for i, t in zip(data["fb_interaction"], data["fb_thumb"], strict=True)
        if t == "up" and arm_of[i] == "champion"
    )
    thumbs = sum(1 for i in data["fb_interaction"] if arm_of[i] == "champion")
    errors = sum(1 for a, e in zip(data["arm"], data["error"], strict=True) if a == "champion" and e)
    responses = data["arm"].count("champion")
    assert stats["champion"]["positive_feedback_rate"].mean == pytest.approx(ups / thumbs, rel=1e-12)
    assert stats["champion"]["error_rate"].mean == pytest.approx(errors / responses, rel=1e-12)


def test_custom_metric_and_phases(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(
        synthetic_rows(phase="ab-5", share=0.05, seed=1), synthetic_rows(phase="ab-10", share=0.1, seed=2)
    )
    settings = ExperimentSettings(
        custom_metrics=(CustomMetric(name="long_answers", numerator="(i.completion_tokens > 40)::INT"),)
    )
    metrics = select_metrics(settings, ["long_answers"])
    moments = metric_moments(store, "exp-1", metrics)
    assert sorted(moments) == ["ab-10", "ab-5"]
    assert 0 < moments["ab-5"]["champion"]["long_answers"].mean < 1


REFERENCE_SQL = """
WITH {fb}
SELECT i.phase, i.arm, i.unit_id, {totals}
FROM interactions i LEFT JOIN fb USING (interaction_id)
WHERE i.deployment_id = 'exp-1' AND i.role = 'served'
GROUP BY ALL
"""


def reference_statistics(store: DuckDBStore, metrics: list[Metric]) -> dict[tuple[str, str, str], list[float]]:
    """Per (phase, arm, metric): n, sum m, sum m^2, sum d, sum d^2, sum m d from plain per-unit sums."""
    totals = ", ".join(
        f"coalesce(sum({m.numerator}), 0)::DOUBLE AS m{k}, coalesce(sum({m.denominator}), 0)::DOUBLE AS d{k}"
        for k, m in enumerate(metrics)
    )
    units: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in store.query(REFERENCE_SQL.format(fb=FEEDBACK_CTE, totals=totals)):
        units.setdefault((row["phase"], row["arm"]), []).append(row)
    out = {}
    for (phase, arm), rows in units.items():
        for k, metric in enumerate(metrics):
            m = np.array([r[f"m{k}"] for r in rows])
            d = np.array([r[f"d{k}"] for r in rows])
            stats = [len(rows), m.sum(), (m * m).sum(), d.sum(), (d * d).sum(), (m * d).sum()]
            out[(phase, arm, metric.name)] = [float(v) for v in stats]
    return out


def test_one_scan_statistics_equal_plain_per_unit_sums(experiment_store: Callable[..., DuckDBStore]) -> None:
    ab5, ab50 = synthetic_rows(phase="ab-5", share=0.05, seed=3), synthetic_rows(phase="ab-50", units=300, seed=4)
    ab50["arm"][:3] = ["challenger", "champion", "challenger"]  # a unit seen in both arms (a forced arm)
    for key, value in (("fb_id", "again"), ("fb_thumb", "down"), ("fb_rating", 2), ("fb_correction", "fixed")):
        ab50[key] += [f"{value}-{i}" if key == "fb_id" else value for i in range(40)]  # second feedback
    for key in ("fb_interaction", "fb_ts"):
        ab50[key] += ab50[key][:40]
    mixed = CustomMetric(name="rated_tokens", numerator="coalesce(fb.rating_sum, 0) * i.completion_tokens")
    flags = CustomMetric(name="slow", numerator="(i.latency_ms > 200)::INT", denominator="(fb.ups IS NOT NULL)::INT")
    settings = ExperimentSettings(custom_metrics=(mixed, flags))
    metrics = select_metrics(settings, None)
    store = experiment_store(ab5, ab50)
    expected = reference_statistics(store, metrics)
    moments = metric_moments(store, "exp-1", metrics)
    seen = 0
    for (phase, arm, name), (n, m_s, m_ss, d_s, d_ss, md) in expected.items():
        ratio = moments[phase][arm][name]
        assert ratio.n == n
        got = [ratio.m.sum, ratio.m.sum_squares, ratio.d.sum, ratio.d.sum_squares, ratio.sum_product]
        assert got == pytest.approx([m_s, m_ss, d_s, d_ss, md], rel=1e-12, abs=1e-9)
        seen += 1
    assert seen == 2 * 2 * len(metrics)


def test_bad_names_raise_clear_errors(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(units=10))
    with pytest.raises(UnknownExperimentError, match="no experiment 'nope'"):
        metric_moments(store, "nope", BUILT_IN)
    with pytest.raises(UnknownMetricError, match="unknown metric latncy; known metrics: positive_feedback_rate"):
        select_metrics(ExperimentSettings(), ["latncy"])


def test_splits() -> None:
    assert phase_split("ab-5") == {"champion": 0.95, "challenger": 0.05}
    assert phase_split("shadow") is None
    assert parse_split("90/10") == {"champion": 0.9, "challenger": 0.1}
    with pytest.raises(InvalidSplitError, match="split '90/20' sums to 110, not 100"):
        parse_split("90/20")
    with pytest.raises(InvalidSplitError, match="write it as champion/challenger"):
        parse_split("ninety")
