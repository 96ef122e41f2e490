"""The lake on a real DuckDB file and real Parquet files: export, redaction, retention, compaction."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pytest
from pipeline_events import interaction

from feedback.events import AuditEvent, ChatMessage, FeedbackEvent, InteractionEvent
from feedback.lake import Lake
from feedback.store import DuckDBStore, Located

OLD_DAY, NEW_DAY = datetime(2026, 1, 10, 12, tzinfo=UTC), datetime(2026, 6, 1, 9, tzinfo=UTC)
OLD_SECRET = "zebra-quartz-old-marker"  # text that retention must wipe from the file
NEW_SECRET = "heron-basalt-new-marker"


def chat(n: int, ts: datetime, text: str) -> InteractionEvent:
    """A realistic interaction on day ``ts`` whose prompt and answer hold PII, look-alikes and ``text``."""
    prompt = ChatMessage(role="user", content=f"{text}: mail me at jane@example.com or call 415-555-2671")
    answer = f"Sure, your card 4111 1111 1111 1111 is noted ({text}). Order #13812345678 ships 2026-06-02."
    update = {"ts": ts, "unit_id": "jane.doe@example.com", "messages": (prompt,), "completion": answer}
    return interaction(n, interaction_id=f"i{n}").model_copy(update=update)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "lake.duckdb")
    yield s
    s.close()


def lake_rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with duckdb.connect() as con:
        glob = str(path / table / "**" / "*.parquet")
        sql = (
            "SELECT interaction_id, day::VARCHAR AS day, unit_id, messages, completion "  # noqa: S608
            f"FROM read_parquet('{glob}', hive_partitioning = true) ORDER BY interaction_id"
        )
        return con.execute(sql).fetchall()


def test_export_writes_raw_and_redacted_day_partitions_once(store: DuckDBStore, tmp_path: Path) -> None:
    lake = Lake(store, tmp_path / "lake")
    store.write_batch([Located(chat(1, OLD_DAY, OLD_SECRET), "interactions", 0, 0)])
    store.write_batch(
        [
            Located(chat(2, NEW_DAY, NEW_SECRET), "interactions", 0, 1),
            Located(FeedbackEvent(feedback_id="f", interaction_id="i2", comment="ring 07700 900123"), "feedback", 0, 0),
            Located(AuditEvent(actor="admin", action="x", reason="from 10.1.2.3"), "audit", 0, 0),
        ]
    )
    assert lake.export().rows == {"interactions": 2, "feedback": 1, "audit": 1}
    assert lake.export().rows == {}  # nothing new
    assert sorted(
        p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").glob("*/interactions/*")
    ) == [
        "raw/interactions/_schema",
        "raw/interactions/day=2026-01-10",
        "raw/interactions/day=2026-06-01",
        "redacted/interactions/_schema",
        "redacted/interactions/day=2026-01-10",
        "redacted/interactions/day=2026-06-01",
    ]
    redacted = lake_rows(tmp_path / "lake" / "redacted", "interactions")
    assert redacted[1] == (
        "i2",
        "2026-06-01",
        "[EMAIL]",
        json.dumps([{"role": "user", "content": f"{NEW_SECRET}: mail me at [EMAIL] or call [PHONE]"}]),
        f"Sure, your card [CARD] is noted ({NEW_SECRET}). Order #13812345678 ships 2026-06-02.",
    )
    raw = lake_rows(tmp_path / "lake" / "raw", "interactions")
    assert raw[1][2] == "jane.doe@example.com"
    assert "4111 1111 1111 1111" in str(raw[1][4])

    store.write_batch([Located(chat(3, NEW_DAY, NEW_SECRET), "interactions", 0, 2)])
    assert lake.export().rows == {"interactions": 1}
    assert [r[0] for r in lake_rows(tmp_path / "lake" / "redacted", "interactions")] == ["i1", "i2", "i3"]
    with duckdb.connect() as con:
        glob = str(tmp_path / "lake" / "redacted" / "feedback" / "**" / "*.parquet")
        sql = f"SELECT comment FROM read_parquet('{glob}')"  # noqa: S608
        assert con.execute(sql).fetchall() == [("ring [PHONE]",)]


def test_retention_purges_whole_days_and_compaction_wipes_their_text(store: DuckDBStore, tmp_path: Path) -> None:
    lake = Lake(store, tmp_path / "lake")
    store.write_batch([Located(chat(n, OLD_DAY, OLD_SECRET * 20), "interactions", 0, n) for n in range(50)])
    store.write_batch([Located(chat(n, NEW_DAY, NEW_SECRET * 20), "interactions", 0, n) for n in range(50, 60)])
    lake.export()
    store.execute("CHECKPOINT")
    assert OLD_SECRET.encode() in store.path.read_bytes()  # the text is really in the file before

    result = lake.purge(keep_days=180, today=date(2026, 7, 1))  # cutoff 2026-01-02
    assert result.days == []  # 2026-01-10 is within 180 days of 2026-07-01
    result = lake.purge(keep_days=100, today=date(2026, 7, 1))  # cutoff 2026-03-23
    assert result.days == ["2026-01-10"]
    assert result.rows == {"interactions": 50, "feedback": 0, "audit": 0}
    assert not list((tmp_path / "lake").glob("*/*/day=2026-01-10"))
    assert len(list((tmp_path / "lake").glob("*/interactions/day=2026-06-01"))) == 2
    assert store.query("SELECT count(*) AS n FROM interactions") == [{"n": 10}]
    data = store.path.read_bytes()
    assert OLD_SECRET.encode() not in data
    assert b"zebra-quartz" not in data
    assert store.query("SELECT count(*) AS n FROM interactions WHERE completion LIKE '%heron%'") == [{"n": 10}]
    store.write_batch([Located(chat(99, NEW_DAY, "after"), "interactions", 0, 99)])  # the store still writes
    assert store.committed_offsets() == {("interactions", 0): 100}


def test_the_audit_trail_keeps_its_own_retention(store: DuckDBStore, tmp_path: Path) -> None:
    lake = Lake(store, tmp_path / "lake")
    store.write_batch([Located(chat(1, OLD_DAY, "old"), "interactions", 0, 0)])
    store.write_batch([Located(AuditEvent(actor="admin", action="x", ts=OLD_DAY), "audit", 0, 0)])
    lake.export()

    result = lake.purge(keep_days=100, today=date(2026, 7, 1), audit_keep_days=180)
    assert result.cutoffs == {"interactions": "2026-03-23", "feedback": "2026-03-23", "audit": "2026-01-02"}
    assert result.rows == {"interactions": 1, "feedback": 0, "audit": 0}
    assert sorted(p.parent.name for p in (tmp_path / "lake").glob("*/*/day=2026-01-10")) == ["audit", "audit"]
    assert store.query("SELECT action FROM audit") == [{"action": "x"}]

    result = lake.purge(keep_days=100, today=date(2026, 7, 10), audit_keep_days=180)  # audit cutoff 2026-01-11
    assert (result.days, result.rows["audit"]) == (["2026-01-10"], 1)
    assert not list((tmp_path / "lake").glob("*/*/day=2026-01-10"))
    assert store.query("SELECT count(*) AS n FROM audit") == [{"n": 0}]
