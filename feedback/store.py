"""The DuckDB store: the worker's single read-write connection to its database file.

Rows arrive in batches as Arrow tables and are inserted with one statement per table, never row
by row. Each batch's Kafka offsets are stored in the same transaction as its rows, so after a
crash the sink resumes exactly after the last committed batch; rows are also deduplicated on
``event_id`` (interactions) and ``feedback_id`` (feedback), so a redelivered event is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from feedback.errors import StoreError
from feedback.events import FeedbackEvent, InteractionEvent
from feedback.migrations import MIGRATIONS


@dataclass(frozen=True, slots=True)
class Located:
    """An event with the Kafka position it was read from."""

    event: InteractionEvent | FeedbackEvent
    topic: str
    partition: int
    offset: int


@dataclass
class BatchResult:
    """What one write did."""

    interactions_inserted: int = 0
    feedback_inserted: int = 0
    duplicates: int = 0
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)


class DuckDBStore:
    """Owns one DuckDB file: migrations, batched idempotent writes, offsets, queries."""

    def __init__(self, path: Path, *, memory_limit: str = "2GB", threads: int = 1) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(path), config={"memory_limit": memory_limit, "threads": threads})
        except (duckdb.Error, OSError) as exc:
            raise StoreError(f"DuckDB file {path} could not be opened: {exc}") from exc
        self.path = path
        self.migrate()

    def migrate(self) -> list[int]:
        """Apply pending migrations in order; return the versions applied."""
        self._run(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT current_timestamp)"
        )
        row = self._con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        current = int(row[0]) if row else 0
        applied = []
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            with self._transaction():
                self._run(sql)
                self._run("INSERT INTO schema_migrations (version) VALUES (?)", [version])
            applied.append(version)
        return applied

    def committed_offsets(self) -> dict[tuple[str, int], int]:
        """The next offset to read for every (topic, partition) the store has seen."""
        rows = self._con.execute("SELECT topic, partition, next_offset FROM kafka_offsets").fetchall()
        return {(topic, partition): offset for topic, partition, offset in rows}

    def write_batch(
        self, located: Sequence[Located], offsets: Mapping[tuple[str, int], int] | None = None
    ) -> BatchResult:
        """Insert a batch of events and advance offsets, all in one transaction.

        ``offsets`` adds next offsets for records that produced no row (dead-lettered ones).
        """
        result = BatchResult(offsets=dict(offsets or {}))
        interactions = [loc for loc in located if isinstance(loc.event, InteractionEvent)]
        feedback = [loc for loc in located if isinstance(loc.event, FeedbackEvent)]
        for loc in located:
            key = (loc.topic, loc.partition)
            result.offsets[key] = max(result.offsets.get(key, 0), loc.offset + 1)
        try:
            with self._transaction():
                result.interactions_inserted = self._insert_interactions(interactions)
                result.feedback_inserted = self._insert_feedback(feedback)
                self._store_offsets(result.offsets)
        except duckdb.Error as exc:
            raise StoreError(f"writing a batch of {len(located)} events failed: {exc}") from exc
        result.duplicates = len(located) - result.interactions_inserted - result.feedback_inserted
        return result

    def _insert_interactions(self, located: Sequence[Located]) -> int:
        if not located:
            return 0
        rows = [_interaction_row(loc) for loc in located]
        self._con.register("batch_interactions", pa.Table.from_pylist(rows))
        try:
            return self._inserted(
                "INSERT INTO interactions BY NAME "
                "SELECT * EXCLUDE (messages), messages::JSON AS messages FROM batch_interactions b "
                "WHERE NOT EXISTS (SELECT 1 FROM interactions i WHERE i.event_id = b.event_id) "
                "QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY kafka_offset) = 1"
            )
        finally:
            self._con.unregister("batch_interactions")

    def _insert_feedback(self, located: Sequence[Located]) -> int:
        if not located:
            return 0
        rows = [_feedback_row(loc) for loc in located]
        self._con.register("batch_feedback", pa.Table.from_pylist(rows))
        try:
            return self._inserted(
                "INSERT INTO feedback BY NAME SELECT * FROM batch_feedback b "
                "WHERE NOT EXISTS (SELECT 1 FROM feedback f "
                "                  WHERE f.feedback_id = b.feedback_id OR f.event_id = b.event_id) "
                "QUALIFY row_number() OVER (PARTITION BY feedback_id ORDER BY kafka_offset) = 1"
            )
        finally:
            self._con.unregister("batch_feedback")

    def _store_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        if offsets:
            self._con.executemany(
                "INSERT OR REPLACE INTO kafka_offsets VALUES (?, ?, ?)",
                [[topic, partition, offset] for (topic, partition), offset in offsets.items()],
            )

    def _inserted(self, sql: str) -> int:
        row = self._con.execute(sql).fetchone()  # DuckDB answers an INSERT with its row count
        return int(row[0]) if row else 0

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._con.execute(sql, list(params)).fetchall()  # a result must be consumed before the next

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a trusted query on the live file; rows as dicts."""
        cursor = self._con.cursor().execute(sql, list(params))  # own cursor: safe beside the sink
        names = [d[0] for d in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        """Checkpoint and close the file."""
        self._con.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._con)


class _Transaction:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con

    def __enter__(self) -> None:
        self._con.execute("BEGIN TRANSACTION").fetchall()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._con.execute("COMMIT" if exc_type is None else "ROLLBACK").fetchall()


def _interaction_row(loc: Located) -> dict[str, Any]:
    event = loc.event
    assert isinstance(event, InteractionEvent)
    row = event.model_dump(exclude={"type", "messages"})
    row["messages"] = json.dumps([m.model_dump() for m in event.messages])
    row["kafka_partition"], row["kafka_offset"] = loc.partition, loc.offset
    return row


def _feedback_row(loc: Located) -> dict[str, Any]:
    row = loc.event.model_dump(exclude={"type"})
    row["kafka_partition"], row["kafka_offset"] = loc.partition, loc.offset
    return row
