"""Moments read from the sink's per-unit rollup equal those read from the raw tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from experiment_data import synthetic_rows

from evaluation.config import CustomMetric, ExperimentSettings
from evaluation.metrics import (
    BUILT_IN,
    Moments,
    metric_moments,
    moments_sql,
    ratio_of,
    rollup_is_current,
    select_metrics,
)
from feedback.events import ChatMessage, FeedbackEvent, InteractionEvent
from feedback.rollup import rebuild_sql
from feedback.store import DuckDBStore, Located


def raw_moments(store: DuckDBStore, experiment: str) -> Moments:
    out: Moments = {}
    for row in store.query(moments_sql(BUILT_IN), [experiment]):
        out.setdefault(row["phase"], {})[row["arm"]] = {m.name: ratio_of(row, k) for k, m in enumerate(BUILT_IN)}
    return out


def assert_same(rolled: Moments, raw: Moments) -> None:
    assert rolled.keys() == raw.keys()
    for phase, arms in raw.items():
        assert rolled[phase].keys() == arms.keys()
        for arm, stats in arms.items():
            for name, b in stats.items():
                a = rolled[phase][arm][name]
                assert (a.n, a.m.n, a.d.n) == (b.n, b.m.n, b.d.n)
                for x, y in ((a.m, b.m), (a.d, b.d)):
                    assert (x.sum, x.sum_squares) == (
                        pytest.approx(y.sum, rel=1e-12),
                        pytest.approx(y.sum_squares, rel=1e-12),
                    )
                assert a.sum_product == pytest.approx(b.sum_product, rel=1e-12)


def test_rows_written_outside_the_sink_read_raw_until_rebuilt(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(units=300, seed=5), synthetic_rows(phase="ab-10", share=0.1, seed=2))
    assert not rollup_is_current(store, "exp-1")  # written by SQL: the rollup is empty
    raw = metric_moments(store, "exp-1", BUILT_IN)
    store.execute(rebuild_sql())
    assert rollup_is_current(store, "exp-1")
    assert store.query("SELECT count(*) AS n FROM unit_rollup")[0]["n"] > 0
    assert_same(metric_moments(store, "exp-1", BUILT_IN), raw)
    store.execute("DELETE FROM feedback WHERE interaction_id LIKE '%-0'")  # as a purge would
    assert not rollup_is_current(store, "exp-1")


def test_custom_metrics_take_the_raw_path(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(units=100, seed=3))
    store.execute(rebuild_sql())
    settings = ExperimentSettings(
        custom_metrics=(CustomMetric(name="long_answers", numerator="(i.completion_tokens > 40)::INT"),)
    )
    metrics = select_metrics(settings, ["latency_ms", "long_answers"])
    moments = metric_moments(store, "exp-1", metrics)
    tokens = store.query(
        "SELECT count(*) FILTER (WHERE completion_tokens > 40) AS long, count(*) AS n FROM interactions "
        "WHERE arm = 'champion' AND role = 'served'"
    )[0]
    assert moments["ab-50"]["champion"]["long_answers"].mean == pytest.approx(tokens["long"] / tokens["n"], rel=1e-12)


def served(n: int, unit: str, arm: str, *, shadow: bool = False) -> InteractionEvent:
    return InteractionEvent(
        event_id=f"e-{n}-{shadow}", interaction_id=f"ix-{n}", request_id=f"r-{n}", unit_id=unit, arm=arm,
        role="shadow" if shadow else "served", model_version="base", deployment_id="exp-2", phase="ab-50",
        messages=(ChatMessage(role="user", content="hi"),), completion="ok", prompt_tokens=3,
        completion_tokens=1 + n % 5, latency_ms=20.0 + (n * 37) % 100, finish_reason="stop",
        confidence=None if n % 11 == 0 else 0.3 + (n % 7) / 10, error="boom" if n % 13 == 0 else None,
    )  # fmt: skip


def test_sink_written_rollup_matches_the_raw_tables(tmp_path: Any) -> None:
    store = DuckDBStore(tmp_path / "sink.duckdb")
    try:
        events: list[Any] = []
        for n in range(120):
            events.append(served(n, f"u{n % 17}", "challenger" if n % 17 < 8 else "champion"))
            if n % 4 == 0:
                events.append(served(n, f"u{n % 17}", "challenger", shadow=True))
        feedback = [
            FeedbackEvent(feedback_id=f"f-{k}", interaction_id=f"ix-{(k * 7) % 130}", thumb="up" if k % 3 else "down",
                          rating=1 + k % 5 if k % 2 else None, correction="fix" if k % 6 == 0 else None)
            for k in range(90)
        ]  # fmt: skip
        stream = [*feedback[:30], *events[:60], *feedback[30:60], *events[60:], *feedback[60:], *feedback[:10]]
        for start in range(0, len(stream), 25):  # batches of 25, feedback before and after its response
            chunk = stream[start : start + 25]
            store.write_batch([Located(e, "t", 0, start + k) for k, e in enumerate(chunk)])
        pending = store.query("SELECT count(*) AS n FROM feedback_pending")[0]["n"]
        assert pending == 6  # ix-121, 122, 125, 126, 128 and 129 have feedback but no response yet
        assert rollup_is_current(store, "exp-2")
        assert_same(metric_moments(store, "exp-2", BUILT_IN), raw_moments(store, "exp-2"))
        store.write_batch([Located(served(n, "u99", "champion"), "t", 1, n) for n in range(120, 130)])
        assert rollup_is_current(store, "exp-2")
        assert store.query("SELECT count(*) AS n FROM feedback_pending")[0]["n"] == 0
        assert_same(metric_moments(store, "exp-2", BUILT_IN), raw_moments(store, "exp-2"))
    finally:
        store.close()
