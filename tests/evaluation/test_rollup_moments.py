"""Moments read from the per-unit rollup plus the tail past its watermark equal those read from the raw tables."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
    rollup_moments_sql,
    select_metrics,
)
from feedback.events import ChatMessage, FeedbackEvent, InteractionEvent
from feedback.lake import Lake
from feedback.rollup import refresh_rollup
from feedback.store import DuckDBStore, Located

OLD, NEW = datetime(2026, 10, 1, 12, tzinfo=UTC), datetime(2026, 11, 20, 12, tzinfo=UTC)


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


def rolled_moments(store: DuckDBStore, experiment: str) -> tuple[Moments, bool]:
    """Moments from ``unit_rollup`` plus the tail past its watermark, and whether its guard held."""
    out: Moments = {}
    rows = store.query(rollup_moments_sql(BUILT_IN), [experiment])
    for row in rows:
        out.setdefault(row["phase"], {})[row["arm"]] = {m.name: ratio_of(row, k) for k, m in enumerate(BUILT_IN)}
    return out, all(row["rollup_current"] for row in rows)


def test_rows_written_by_sql_are_read_through_the_tail(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(units=300, seed=5), synthetic_rows(phase="ab-10", share=0.1, seed=2))
    raw = raw_moments(store, "exp-1")
    tail_only, current = rolled_moments(store, "exp-1")  # nothing rolled up yet: every row is in the tail
    assert current
    assert store.query("SELECT count(*) AS n FROM unit_rollup") == [{"n": 0}]
    assert_same(tail_only, raw)
    refresh_rollup(store)
    assert store.query("SELECT count(*) AS n FROM unit_rollup")[0]["n"] > 0
    rolled, current = rolled_moments(store, "exp-1")  # now nothing is in the tail
    assert current
    assert_same(rolled, raw)
    assert_same(metric_moments(store, "exp-1", BUILT_IN), raw)


def test_custom_metrics_take_the_raw_path(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(units=100, seed=3))
    refresh_rollup(store)
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
        role="shadow" if shadow else "served", model_version="base", deployment_id="exp-2", phase="ab-50", ts=NEW,
        messages=(ChatMessage(role="user", content="hi"),), completion="ok", prompt_tokens=3,
        completion_tokens=1 + n % 5, latency_ms=20.0 + (n * 37) % 100, finish_reason="stop",
        confidence=None if n % 11 == 0 else 0.3 + (n % 7) / 10, error="boom" if n % 13 == 0 else None,
    )  # fmt: skip


def test_rollup_and_tail_equal_the_raw_tables_through_duplicates_late_feedback_and_purge(tmp_path: Any) -> None:
    store = DuckDBStore(tmp_path / "sink.duckdb")
    try:
        events: list[Any] = []
        for n in range(120):
            events.append(served(n, f"u{n % 17}", "challenger" if n % 17 < 8 else "champion"))
            if n % 4 == 0:
                events.append(served(n, f"u{n % 17}", "challenger", shadow=True))
        feedback = [
            FeedbackEvent(feedback_id=f"f-{k}", interaction_id=f"ix-{(k * 7) % 130}", thumb="up" if k % 3 else "down",
                          rating=1 + k % 5 if k % 2 else None, correction="fix" if k % 6 == 0 else None,
                          ts=OLD if k % 5 == 0 else NEW)
            for k in range(90)
        ]  # fmt: skip
        # feedback before and after its response, several per interaction, a redelivery at the end
        stream = [*feedback[:30], *events[:60], *feedback[30:60], *events[60:], *feedback[60:], *feedback[:10]]
        for start in range(0, len(stream), 25):
            chunk = stream[start : start + 25]
            store.write_batch([Located(e, "t", 0, start + k) for k, e in enumerate(chunk)])
            if start % 50 == 0:  # a refresh every other batch: the other one stays in the tail
                refresh_rollup(store)
            rolled, current = rolled_moments(store, "exp-2")
            assert current
            assert_same(rolled, raw_moments(store, "exp-2"))
        assert store.query("SELECT count(*) AS n FROM feedback_pending")[0]["n"] == 6  # ix-121..129: no response
        store.write_batch([Located(served(n, "u99", "champion"), "t", 1, n) for n in range(120, 130)])
        assert_same(rolled_moments(store, "exp-2")[0], raw_moments(store, "exp-2"))  # early feedback in the tail
        refresh_rollup(store)
        assert store.query("SELECT count(*) AS n FROM feedback_pending")[0]["n"] == 0
        assert_same(metric_moments(store, "exp-2", BUILT_IN), raw_moments(store, "exp-2"))
        purged = Lake(store, tmp_path / "lake").purge(keep_days=10, today=NEW.date())
        assert purged.rows["feedback"] == 18  # every fifth feedback row was from the old day
        rolled, current = rolled_moments(store, "exp-2")
        assert current
        assert_same(rolled, raw_moments(store, "exp-2"))
    finally:
        store.close()


def test_a_failed_guard_reads_the_raw_tables(tmp_path: Any) -> None:
    store = DuckDBStore(tmp_path / "guard.duckdb")
    try:
        store.write_batch([Located(served(n, f"u{n % 5}", ("champion", "challenger")[n % 2]), "t", 0, n)
                           for n in range(40)])  # fmt: skip
        through = refresh_rollup(store).through
        assert through is not None
        store.write_batch([Located(served(n, f"u{n % 5}", "champion"), "t", 0, n) for n in range(40, 50)])
        # a clock that stepped back: rows stored after the refresh with an ingested_at it already covers
        store.execute(
            "UPDATE interactions SET ingested_at = ? WHERE ingested_at > ?", [through - timedelta(1), through]
        )
        rolled, current = rolled_moments(store, "exp-2")
        assert not current
        raw = raw_moments(store, "exp-2")
        assert rolled["ab-50"]["champion"]["latency_ms"].d.sum == 20  # the moved rows are in neither part
        assert raw["ab-50"]["champion"]["latency_ms"].d.sum == 30
        assert_same(metric_moments(store, "exp-2", BUILT_IN), raw)
        refresh_rollup(store)  # rebuilds
        assert_same(rolled_moments(store, "exp-2")[0], raw)
    finally:
        store.close()


def test_a_file_without_the_rollups_reads_the_raw_tables(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(units=50, seed=4))
    raw = raw_moments(store, "exp-1")
    store.execute("DROP TABLE rollup_watermark")  # as a file from before migration 6, opened read-only
    assert_same(metric_moments(store, "exp-1", BUILT_IN), raw)
