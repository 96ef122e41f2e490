"""The per-unit rollups the periodic refresh keeps equal a recomputation from the raw tables."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from feedback.events import ChatMessage, FeedbackEvent, InteractionEvent
from feedback.lake import Lake
from feedback.rollup import RefreshResult, refresh_rollup
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
DAY = datetime(2026, 11, 20, 12, tzinfo=UTC)


def response(n: int, *, unit: str, role: str = "served", arm: str = "champion", error: str | None = None,
             confidence: float | None = 0.5, phase: str = "ab-50", ts: datetime = DAY) -> InteractionEvent:  # fmt: skip
    return InteractionEvent(
        event_id=f"{n:08d}-{role}", interaction_id=f"ix-{n}", request_id=f"req-{n}", unit_id=unit, arm=arm,
        role=role, model_version="base", deployment_id="exp", phase=phase, ts=ts,
        messages=(ChatMessage(role="user", content="hello?"),), completion="hi", prompt_tokens=4,
        completion_tokens=n % 7 + 1, latency_ms=10.0 + n, finish_reason="stop", confidence=confidence, error=error,
    )  # fmt: skip


def fb(fid: str, n: int, *, thumb: str | None = None, rating: int | None = None, correction: str | None = None,
       ts: datetime = DAY) -> Any:  # fmt: skip
    return FeedbackEvent(
        feedback_id=fid, interaction_id=f"ix-{n}", thumb=thumb, rating=rating, correction=correction, ts=ts
    )


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


def count(store: DuckDBStore, table: str) -> int:
    return int(store.query(f"SELECT count(*) AS n FROM {table}")[0]["n"])  # noqa: S608


def test_the_sink_leaves_the_rollups_alone(store: DuckDBStore) -> None:
    assert refresh_rollup(store) == RefreshResult(None, 0, 0)  # nothing stored: nothing to roll up
    store.write_batch(located([response(1, unit="u1"), fb("f1", 1, thumb="up"), fb("f2", 7, rating=3)], 0))
    assert (count(store, "unit_rollup"), count(store, "feedback_pending")) == (0, 0)
    result = refresh_rollup(store)
    assert (result.interactions_rows, result.feedback_rows) == (1, 2)
    assert store.query(STORED_UNITS) == store.query(RECOMPUTED_UNITS)
    assert store.query(PENDING) == [{"interaction_id": "ix-7", "feedbacks": 1, "ups": 0, "corrections": 0}]


def test_refreshes_equal_recomputation_after_duplicates_and_late_and_early_feedback(store: DuckDBStore) -> None:
    first = [
        response(1, unit="u1"),
        response(1, unit="u1", role="shadow", arm="challenger"),
        response(2, unit="u1", error="timeout", confidence=None),
        response(3, unit="u2", arm="challenger"),
        fb("f1", 1, thumb="up", rating=5),
        fb("f2", 1, thumb="down", correction="better"),
        fb("f3", 9, thumb="up", correction="early"),  # its response lands later
    ]
    store.write_batch(located(first, 0))
    refresh_rollup(store)
    assert store.query(PENDING) == [{"interaction_id": "ix-9", "feedbacks": 1, "ups": 1, "corrections": 1}]
    second = [
        fb("f4", 1, correction="again"),  # a second correction on a rolled-up response: still corrected once
        fb("f5", 3, rating=2, thumb="up"),  # late feedback on a rolled-up response
        fb("f6", 9, rating=4),  # still early: pending grows
        response(4, unit="u2", arm="challenger", phase="ab-25"),
        fb("f9", 4, correction="first"),  # feedback in the same interval as its response
    ]
    store.write_batch(located(second, 100))
    refresh_rollup(store)
    assert store.query(PENDING) == [{"interaction_id": "ix-9", "feedbacks": 2, "ups": 1, "corrections": 1}]
    store.write_batch(located([response(9, unit="u2", arm="challenger"), fb("f7", 2, thumb="down")], 200))
    redelivered = [*first[:3], fb("f2", 1, thumb="down"), fb("f8", 2, thumb="up", rating=1), response(5, unit="u3")]
    result = store.write_batch(located(redelivered, 300))  # a redelivery: only f8 and response 5 are new
    assert (result.interactions_inserted, result.feedback_inserted, result.duplicates) == (1, 1, 4)
    refresh_rollup(store)  # two batches in one interval
    assert store.query(PENDING) == []
    stored, recomputed = store.query(STORED_UNITS), store.query(RECOMPUTED_UNITS)
    assert stored == recomputed
    u1 = next(r for r in stored if r["unit_id"] == "u1")
    assert (u1["responses"], u1["errors"], u1["ups"], u1["downs"], u1["rating_sum"], u1["corrected"]) == (
        2, 1, 2, 2, 6, 1,
    )  # fmt: skip
    u2 = next(r for r in stored if r["unit_id"] == "u2" and r["phase"] == "ab-50")
    assert (u2["responses"], u2["ups"], u2["ratings"], u2["rating_sum"], u2["corrected"]) == (2, 2, 2, 6, 1)
    u2_25 = next(r for r in stored if r["unit_id"] == "u2" and r["phase"] == "ab-25")
    assert (u2_25["responses"], u2_25["feedbacks"], u2_25["corrected"]) == (1, 1, 1)
    assert refresh_rollup(store).interactions_rows == 7  # nothing new: the same watermark, no rows added
    assert store.query(STORED_UNITS) == recomputed


def test_a_correction_after_the_watermark_counts_only_if_none_came_before(store: DuckDBStore) -> None:
    store.write_batch(located([response(1, unit="u1"), response(2, unit="u1"), fb("f1", 1, correction="a")], 0))
    refresh_rollup(store)
    store.write_batch(located([fb("f2", 1, correction="b"), fb("f3", 2, correction="c")], 10))
    store.write_batch(located([fb("f4", 2, correction="d")], 20))
    refresh_rollup(store)
    assert store.query("SELECT sum(corrected) AS c, sum(feedbacks) AS f FROM unit_rollup") == [{"c": 2, "f": 4}]
    assert store.query(STORED_UNITS) == store.query(RECOMPUTED_UNITS)


def test_a_row_stored_at_or_before_the_watermark_forces_a_rebuild(store: DuckDBStore) -> None:
    store.write_batch(located([response(1, unit="u1"), fb("f1", 1, thumb="up")], 0))
    through = refresh_rollup(store).through
    assert through is not None
    # as if the clock had stepped back: a row stored now with an ingested_at the watermark already covers
    store.write_batch(located([response(2, unit="u1"), fb("f2", 2, thumb="down")], 10))
    store.execute("UPDATE interactions SET ingested_at = ? WHERE interaction_id = 'ix-2'", [through - timedelta(1)])
    assert store.query("SELECT sum(responses) AS n FROM unit_rollup") == [{"n": 1}]
    result = refresh_rollup(store)
    assert (result.interactions_rows, result.feedback_rows) == (2, 2)
    assert store.query(STORED_UNITS) == store.query(RECOMPUTED_UNITS)
    assert store.query("SELECT sum(responses) AS n, sum(downs) AS d FROM unit_rollup") == [{"n": 2, "d": 1}]


def test_rows_are_merged_into_one_per_unit_once_the_table_doubled(store: DuckDBStore) -> None:
    for batch in range(6):  # every refresh appends rows for u1 and u2
        events = [response(10 * batch + k, unit=f"u{k % 2 + 1}") for k in range(4)]
        store.write_batch(located([*events, fb(f"f{batch}", 10 * batch, thumb="up", correction="c")], 10 * batch))
        refresh_rollup(store)
    assert count(store, "unit_rollup") == 12
    store.execute("UPDATE rollup_watermark SET merged_rows = -500")  # as if the table had doubled since its merge
    store.write_batch(located([response(99, unit="u3")], 100))
    refresh_rollup(store)
    assert count(store, "unit_rollup") == 3
    assert store.query("SELECT merged_rows FROM rollup_watermark") == [{"merged_rows": 3}]
    assert store.query(STORED_UNITS) == store.query(RECOMPUTED_UNITS)
    u1 = store.query("SELECT responses, ups, corrected FROM unit_rollup WHERE unit_id = 'u1'")
    assert u1 == [{"responses": 12, "ups": 6, "corrected": 6}]


def test_retention_rebuilds_the_rollups_of_what_is_left(store: DuckDBStore, tmp_path: Path) -> None:
    old, new = DAY - timedelta(days=30), DAY
    events = [
        response(1, unit="u-old", ts=old),  # purged, its feedback of a later day stays (and no longer counts)
        response(2, unit="u1", ts=old),
        response(3, unit="u1", ts=new),  # kept, its feedback of the old day is purged
        fb("f1", 1, thumb="up", ts=new),
        fb("f2", 3, thumb="down", correction="x", ts=old),
        fb("f3", 3, thumb="up", ts=new),
        fb("f4", 8, rating=2, ts=old),  # pending, purged
    ]
    store.write_batch(located(events, 0))
    refresh_rollup(store)
    assert store.query(PENDING) == [{"interaction_id": "ix-8", "feedbacks": 1, "ups": 0, "corrections": 0}]
    purged = Lake(store, tmp_path / "lake").purge(keep_days=10, today=DAY.date())
    assert purged.rows == {"interactions": 2, "feedback": 2, "audit": 0}
    assert store.query(STORED_UNITS) == store.query(RECOMPUTED_UNITS)
    assert store.query("SELECT unit_id, responses, ups, downs, corrected FROM unit_rollup") == [
        {"unit_id": "u1", "responses": 1, "ups": 1, "downs": 0, "corrected": 0}
    ]
    # feedback whose response was purged waits like early feedback (the raw join ignores it too)
    assert store.query(PENDING) == [{"interaction_id": "ix-1", "feedbacks": 1, "ups": 1, "corrections": 0}]
    store.write_batch(located([response(4, unit="u1"), fb("f5", 4, thumb="up")], 20))  # after the compaction
    refresh_rollup(store)
    assert store.query(STORED_UNITS) == store.query(RECOMPUTED_UNITS)
    assert Lake(store, tmp_path / "lake").purge(keep_days=10, today=date(2026, 11, 21)).rows["interactions"] == 0


def test_migration_6_starts_from_nothing_rolled_up_and_the_refresh_reads_every_row(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    store = DuckDBStore(path)
    store.write_batch(located([response(1, unit="u1"), fb("f1", 1, thumb="up"), fb("f2", 7, rating=3)], 0))
    refresh_rollup(store)
    store.execute("DROP TABLE rollup_watermark; CREATE TABLE rollup_state (merged_rows BIGINT NOT NULL)")
    store.execute("DELETE FROM schema_migrations WHERE version = 6")  # as a store of migration 5 was
    store.close()
    reopened = DuckDBStore(path)
    try:
        assert (count(reopened, "unit_rollup"), count(reopened, "feedback_pending")) == (0, 0)
        assert refresh_rollup(reopened).interactions_rows == 1
        assert reopened.query(STORED_UNITS) == reopened.query(RECOMPUTED_UNITS)
    finally:
        reopened.close()
