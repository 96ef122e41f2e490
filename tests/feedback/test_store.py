import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedback.errors import StoreError
from feedback.events import ChatMessage, FeedbackEvent, InteractionEvent
from feedback.migrations import MIGRATIONS
from feedback.store import DuckDBStore, Located


def interaction(interaction_id: str, *, event_id: str | None = None) -> InteractionEvent:
    extra = {"event_id": event_id} if event_id else {}
    return InteractionEvent(
        interaction_id=interaction_id,
        request_id="req",
        unit_id="user-1",
        arm="champion",
        role="served",
        model_version="base",
        deployment_id="initial",
        phase="champion-only",
        messages=(ChatMessage(role="user", content="hello?"),),
        completion="hi",
        prompt_tokens=4,
        completion_tokens=1,
        latency_ms=5.0,
        finish_reason="stop",
        confidence=0.5,
        **extra,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "db" / "flywheel.duckdb")
    yield s
    s.close()


def test_migrations_apply_once(tmp_path: Path) -> None:
    path = tmp_path / "f.duckdb"
    first = DuckDBStore(path)
    assert first.query("SELECT version FROM schema_migrations") == [{"version": v} for v, _ in MIGRATIONS]
    first.close()
    second = DuckDBStore(path)
    assert second.migrate() == []
    second.close()


def test_batch_writes_rows_and_offsets(store: DuckDBStore) -> None:
    events = [
        Located(interaction("a" * 32), "interactions", 0, 10),
        Located(interaction("b" * 32), "interactions", 1, 3),
        Located(FeedbackEvent(feedback_id="fb-1", interaction_id="a" * 32, thumb="up"), "feedback", 2, 7),
    ]
    result = store.write_batch(events)
    assert (result.interactions_inserted, result.feedback_inserted, result.duplicates) == (2, 1, 0)
    assert store.committed_offsets() == {("interactions", 0): 11, ("interactions", 1): 4, ("feedback", 2): 8}
    rows = store.query("SELECT interaction_id, messages, kafka_offset FROM interactions ORDER BY interaction_id")
    assert rows == [
        {"interaction_id": "a" * 32, "messages": '[{"role":"user","content":"hello?"}]', "kafka_offset": 10},
        {"interaction_id": "b" * 32, "messages": '[{"role":"user","content":"hello?"}]', "kafka_offset": 3},
    ]
    assert store.query("SELECT feedback_id, thumb, rating FROM feedback") == [
        {"feedback_id": "fb-1", "thumb": "up", "rating": None}
    ]


def test_redelivered_events_are_stored_once(store: DuckDBStore) -> None:
    event = interaction("a" * 32)
    feedback = FeedbackEvent(feedback_id="fb-1", interaction_id="a" * 32, rating=4)
    same_id_again = FeedbackEvent(feedback_id="fb-1", interaction_id="a" * 32, rating=1)  # a client retry
    first = store.write_batch([Located(event, "interactions", 0, 0), Located(event, "interactions", 0, 1)])
    second = store.write_batch(
        [
            Located(event, "interactions", 0, 2),
            Located(feedback, "feedback", 0, 0),
            Located(same_id_again, "feedback", 0, 1),
        ]
    )
    assert (first.interactions_inserted, first.duplicates) == (1, 1)
    assert (second.interactions_inserted, second.feedback_inserted, second.duplicates) == (0, 1, 2)
    assert store.query("SELECT count(*) AS n FROM interactions") == [{"n": 1}]
    assert store.query("SELECT rating FROM feedback") == [{"rating": 4}]
    assert store.committed_offsets() == {("interactions", 0): 3, ("feedback", 0): 2}


def test_offsets_for_rowless_records_advance(store: DuckDBStore) -> None:
    store.write_batch([], {("interactions", 4): 99})
    assert store.committed_offsets() == {("interactions", 4): 99}


def test_a_failed_batch_leaves_neither_rows_nor_offsets(store: DuckDBStore) -> None:
    store.write_batch([Located(interaction("a" * 32), "interactions", 0, 0)])
    store.query("ALTER TABLE feedback RENAME TO feedback_moved")  # the feedback insert will fail
    bad = [
        Located(interaction("b" * 32), "interactions", 0, 1),
        Located(FeedbackEvent(feedback_id="f", interaction_id="b" * 32, rating=5), "feedback", 0, 0),
    ]
    with pytest.raises(StoreError, match="writing a batch of 2 events failed"):
        store.write_batch(bad)
    assert store.query("SELECT interaction_id FROM interactions") == [{"interaction_id": "a" * 32}]
    assert store.committed_offsets() == {("interactions", 0): 1}


def test_unwritable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="could not be opened"):
        DuckDBStore(blocker / "sub" / "x.duckdb")


def test_file_is_locked_against_another_process(store: DuckDBStore) -> None:
    other = subprocess.run(
        [sys.executable, "-c", f"import duckdb; duckdb.connect({str(store.path)!r})"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert other.returncode == 1
    assert "Could not set lock on file" in other.stderr
