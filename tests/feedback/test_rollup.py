"""The per-unit rollups the sink keeps equal a recomputation from the raw tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from feedback.events import ChatMessage, FeedbackEvent, InteractionEvent
from feedback.rollup import MIGRATION
from feedback.store import DuckDBStore, Located

# written independently of feedback.rollup: the report's per-unit totals straight from the raw tables
RECOMPUTED_UNITS = """
WITH fb AS (SELECT interaction_id, count(*) AS feedbacks, count(*) FILTER (WHERE thumb = 'up') AS ups,
                   count(*) FILTER (WHERE thumb = 'down') AS downs, sum(rating) AS rating_sum,
                   count(rating) AS ratings, count(correction) AS corrections
            FROM feedback GROUP BY interaction_id)
SELECT i.deployment_id, i.phase, i.arm, i.unit_id, min(i.ts) AS first_ts, count(*) AS responses,
       count(i.error) AS errors, sum(i.latency_ms) AS latency_ms, sum(i.completion_tokens) AS completion_tokens,
       coalesce(sum(i.confidence), 0) AS confidence, count(i.confidence) AS confidences,
       coalesce(sum(fb.feedbacks), 0) AS feedbacks, coalesce(sum(fb.ups), 0) AS ups,
       coalesce(sum(fb.downs), 0) AS downs, coalesce(sum(fb.rating_sum), 0) AS rating_sum,
       coalesce(sum(fb.ratings), 0) AS ratings,
       count(*) FILTER (WHERE fb.corrections > 0) AS corrected
FROM interactions i LEFT JOIN fb USING (interaction_id)
WHERE i.role = 'served' GROUP BY ALL ORDER BY ALL
"""
STORED_UNITS = """
SELECT deployment_id, phase, arm, unit_id, min(first_ts) AS first_ts, sum(responses) AS responses,
       sum(errors) AS errors, sum(latency_ms) AS latency_ms, sum(completion_tokens) AS completion_tokens,
       sum(confidence) AS confidence, sum(confidences) AS confidences, sum(feedbacks) AS feedbacks, sum(ups) AS ups,
       sum(downs) AS downs, sum(rating_sum) AS rating_sum, sum(ratings) AS ratings, sum(corrected) AS corrected
FROM unit_rollup GROUP BY ALL ORDER BY ALL
"""
PENDING = "SELECT interaction_id, feedbacks, ups, corrections FROM feedback_pending ORDER BY ALL"


def response(n: int, *, unit: str, role: str = "served", arm: str = "champion", error: str | None = None,
             confidence: float | None = 0.5, phase: str = "ab-50") -> InteractionEvent:  # fmt: skip
    return InteractionEvent(
        event_id=f"{n:08d}-{role}", interaction_id=f"ix-{n}", request_id=f"req-{n}", unit_id=unit, arm=arm,
        role=role, model_version="base", deployment_id="exp", phase=phase,
        messages=(ChatMessage(role="user", content="hello?"),), completion="hi", prompt_tokens=4,
        completion_tokens=n % 7 + 1, latency_ms=10.0 + n, finish_reason="stop", confidence=confidence, error=error,
    )  # fmt: skip


def fb(fid: str, n: int, *, thumb: str | None = None, rating: int | None = None, correction: str | None = None) -> Any:
    return FeedbackEvent(feedback_id=fid, interaction_id=f"ix-{n}", thumb=thumb, rating=rating, correction=correction)


def located(events: list[Any], start: int) -> list[Located]:
    return [
        Located(e, "feedback" if isinstance(e, FeedbackEvent) else "interactions", 0, start + k)
        for k, e in enumerate(events)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "rollup.duckdb")
    yield s
    s.close()


def test_rollup_equals_recomputation_after_duplicates_and_late_feedback(store: DuckDBStore) -> None:
    first = [
        response(1, unit="u1"),
        response(1, unit="u1", role="shadow", arm="challenger"),
        response(2, unit="u1", error="timeout", confidence=None),
        response(3, unit="u2", arm="challenger"),
        fb("f1", 1, thumb="up", rating=5),
        fb("f2", 1, thumb="down", correction="better"),
        fb("f3", 9, thumb="up", correction="early"),  # its response lands in a later batch
    ]
    store.write_batch(located(first, 0))
    assert store.query(PENDING) == [{"interaction_id": "ix-9", "feedbacks": 1, "ups": 1, "corrections": 1}]
    second = [
        fb("f4", 1, correction="again"),  # a second correction: the response still counts once
        fb("f5", 3, rating=2),
        fb("f6", 9, rating=4),  # still early
        response(4, unit="u2", arm="challenger", phase="ab-25"),
    ]
    store.write_batch(located(second, 100))
    store.write_batch(located([response(9, unit="u2", arm="challenger"), fb("f7", 2, thumb="down")], 200))
    redelivered = [*first[:3], fb("f2", 1, thumb="down"), fb("f8", 2, thumb="up", rating=1), response(5, unit="u3")]
    result = store.write_batch(located(redelivered, 300))  # a redelivery: only f8 and response 5 are new
    assert (result.interactions_inserted, result.feedback_inserted, result.duplicates) == (1, 1, 4)
    assert store.query(PENDING) == []
    stored, recomputed = store.query(STORED_UNITS), store.query(RECOMPUTED_UNITS)
    assert stored == recomputed
    u1 = next(r for r in stored if r["unit_id"] == "u1")
    assert (u1["responses"], u1["errors"], u1["ups"], u1["downs"], u1["rating_sum"], u1["corrected"]) == (
        2, 1, 2, 2, 6, 1,
    )  # fmt: skip
    u2 = next(r for r in stored if r["unit_id"] == "u2" and r["phase"] == "ab-50")
    assert (u2["responses"], u2["ups"], u2["ratings"], u2["rating_sum"], u2["corrected"]) == (2, 1, 2, 6, 1)


def test_migration_backfills_rows_stored_before_it(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    store = DuckDBStore(path)
    store.write_batch(located([response(1, unit="u1"), fb("f1", 1, thumb="up"), fb("f2", 7, rating=3)], 0))
    store.execute("DROP TABLE unit_rollup; DROP TABLE feedback_pending; DROP TABLE rollup_state")
    store.execute("DELETE FROM schema_migrations WHERE version = ?", [MIGRATION])
    store.close()
    reopened = DuckDBStore(path)  # the rollups' migration runs again over the stored rows
    try:
        assert reopened.query(STORED_UNITS) == reopened.query(RECOMPUTED_UNITS)
        assert reopened.query(PENDING) == [{"interaction_id": "ix-7", "feedbacks": 1, "ups": 0, "corrections": 0}]
    finally:
        reopened.close()


def test_rows_are_merged_into_one_per_unit_once_the_table_doubled(store: DuckDBStore) -> None:
    for batch in range(6):  # every batch appends rows for u1 and u2, and one for the feedback on u1
        events = [response(10 * batch + k, unit=f"u{k % 2 + 1}") for k in range(4)]
        store.write_batch(located([*events, fb(f"f{batch}", 10 * batch, thumb="up", correction="c")], 10 * batch))
    assert store.query("SELECT count(*) AS n FROM unit_rollup")[0]["n"] == 18
    store.execute("UPDATE rollup_state SET merged_rows = -500")  # as if the table had doubled since its last merge
    store.write_batch(located([response(99, unit="u3")], 100))
    assert store.query("SELECT count(*) AS n FROM unit_rollup")[0]["n"] == 3
    assert store.query("SELECT merged_rows FROM rollup_state") == [{"merged_rows": 3}]
    assert store.query(STORED_UNITS) == store.query(RECOMPUTED_UNITS)
    u1 = store.query("SELECT responses, ups, corrected FROM unit_rollup WHERE unit_id = 'u1'")
    assert u1 == [{"responses": 12, "ups": 6, "corrected": 6}]
