"""The columnar write path: validated JSON parsed by DuckDB, exact values, dedup, one transaction."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pipeline_events import audit, feedback, interaction

from feedback.codec import decode_fast
from feedback.ingest import EventBatch
from feedback.store import DeadLetter, DuckDBStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "ingest.duckdb")
    yield s
    s.close()


def batch_of(*raws: bytes, start: int = 0) -> EventBatch:
    batch = EventBatch()
    for n, raw in enumerate(raws):
        batch.add(*decode_fast(raw), 0, start + n)
    batch.advance("interactions", 0, start + len(raws))
    return batch


def test_every_column_lands_with_the_events_value(store: DuckDBStore) -> None:
    event = interaction(42)
    result = store.write_events(batch_of(event.encode()))
    assert (result.interactions_inserted, result.duplicates) == (1, 0)
    row = store.query("SELECT * EXCLUDE (ingested_at) FROM interactions")[0]
    expected = json.loads(event.encode())
    expected.pop("type")
    expected["ts"] = event.ts
    expected["messages"] = json.dumps(expected["messages"], separators=(",", ":"))
    assert row == expected | {"kafka_partition": 0, "kafka_offset": 0}


def test_feedback_and_audit_land_in_their_tables(store: DuckDBStore) -> None:
    rating, action = feedback(3), audit(1)
    result = store.write_events(batch_of(rating.encode(), action.encode()))
    assert (result.feedback_inserted, result.audit_inserted) == (1, 1)
    assert store.query("SELECT feedback_id, rating, comment, user_id FROM feedback") == [
        {"feedback_id": "fb-3", "rating": 4, "comment": "useful", "user_id": None}
    ]
    assert store.query("SELECT event_id, details, outcome FROM audit") == [
        {"event_id": action.event_id, "details": '{"to":10}', "outcome": "allowed"}
    ]


@pytest.mark.parametrize(
    ("ts", "instant"),
    [
        ("2026-11-29T17:00:00.25+05:30", datetime(2026, 11, 29, 11, 30, 0, 250000, tzinfo=UTC)),
        ("2026-11-29t17:00:00z", datetime(2026, 11, 29, 17, 0, tzinfo=UTC)),  # DuckDB's own parser refuses this
        ("2026-11-29T17:00:00", datetime(2026, 11, 29, 17, 0, tzinfo=UTC)),  # no zone: UTC
    ],
)
def test_ts_is_stored_as_the_validator_read_it(store: DuckDBStore, ts: str, instant: datetime) -> None:
    data = json.loads(interaction(1).encode()) | {"ts": ts}
    store.write_events(batch_of(json.dumps(data).encode()))
    assert store.query("SELECT ts FROM interactions") == [{"ts": instant}]


def test_duplicates_in_a_batch_keep_the_first(store: DuckDBStore) -> None:
    first, again = interaction(1), interaction(1).model_copy(update={"event_id": interaction(1).event_id})
    event = first.encode()
    batch = batch_of(event, event, again.encode())
    assert batch.in_batch_duplicates == 1
    result = store.write_events(batch)
    assert (result.interactions_inserted, result.duplicates) == (2, 1)
    assert store.query("SELECT kafka_offset FROM interactions ORDER BY kafka_offset") == [
        {"kafka_offset": 0},
        {"kafka_offset": 2},
    ]


def test_a_redelivered_batch_inserts_only_new_rows_with_its_dead_letters_and_offsets(store: DuckDBStore) -> None:
    old = [interaction(n).encode() for n in range(3)]
    store.write_events(batch_of(*old))
    mixed = batch_of(*old, interaction(3).encode(), feedback(3).encode(), start=3)
    letter = DeadLetter("interactions", 0, 8, "invalid: not JSON", 9)
    result = store.write_events(mixed, dead=[letter])
    assert (result.interactions_inserted, result.feedback_inserted, result.duplicates) == (1, 1, 3)
    assert result.dead_lettered == 1
    assert store.query("SELECT count(*) AS n, max(kafka_offset) AS last FROM interactions") == [{"n": 4, "last": 6}]
    assert store.query("SELECT kafka_offset, reason FROM dead_letters") == [
        {"kafka_offset": 8, "reason": "invalid: not JSON"}
    ]
    assert store.committed_offsets() == {("interactions", 0): 9}
