"""The DuckDB store: the worker's single read-write connection to its database file.

Rows arrive in batches as Arrow tables and are inserted with one statement per table, never row
by row. Each batch's Kafka offsets are stored in the same transaction as its rows, so after a
crash the sink resumes exactly after the last committed batch; rows are also deduplicated on
``event_id`` (interactions) and ``feedback_id`` (feedback), so a redelivered event is harmless.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from feedback.errors import StoreError
from feedback.events import AnyEvent, AuditEvent, FeedbackEvent, InteractionEvent
from feedback.migrations import MIGRATIONS


@dataclass(frozen=True, slots=True)
class Located:
    """An event with the Kafka position it was read from."""

    event: AnyEvent
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the sink refused, and why."""

    topic: str
    partition: int
    offset: int
    reason: str
    size_bytes: int


@dataclass
class BatchResult:
    """What one write did."""

    interactions_inserted: int = 0
    feedback_inserted: int = 0
    audit_inserted: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)


# Columns taken from each event as they are; the rest are computed (JSON text, Kafka position).
_INTERACTION_FIELDS = tuple(f for f in InteractionEvent.model_fields if f not in ("type", "messages"))
_FEEDBACK_FIELDS = tuple(f for f in FeedbackEvent.model_fields if f != "type")
_AUDIT_FIELDS = tuple(f for f in AuditEvent.model_fields if f not in ("type", "details"))


class DuckDBStore:
    """Owns one DuckDB file: migrations, batched idempotent writes, offsets, queries."""

    def __init__(self, path: Path, *, memory_limit: str = "2GB", threads: int = 1) -> None:
        self._config: dict[str, str | bool | int | float | list[str]] = {
            "memory_limit": memory_limit,
            "threads": threads,
        }
        self._lock = threading.RLock()  # held while writing or replacing the connection (compaction)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(path), config=self._config)
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
        with self._lock:  # own cursor: the worker's status route asks while the sink writes
            rows = self._con.cursor().execute("SELECT topic, partition, next_offset FROM kafka_offsets").fetchall()
        return {(topic, partition): offset for topic, partition, offset in rows}

    def write_batch(
        self,
        located: Sequence[Located],
        offsets: Mapping[tuple[str, int], int] | None = None,
        dead: Sequence[DeadLetter] = (),
    ) -> BatchResult:
        """Insert a batch of events, record refused ones and advance offsets, all in one transaction.

        ``offsets`` adds next offsets for records that produced no row; ``dead`` are the records
        refused (already on the dead-letter topic), recorded once per Kafka position.
        """
        result = BatchResult(offsets=dict(offsets or {}))
        for loc in located:
            key = (loc.topic, loc.partition)
            result.offsets[key] = max(result.offsets.get(key, 0), loc.offset + 1)
        for letter in dead:
            key = (letter.topic, letter.partition)
            result.offsets[key] = max(result.offsets.get(key, 0), letter.offset + 1)
        try:
            with self._lock, self._transaction():
                result.interactions_inserted = self._insert_interactions(located)
                result.feedback_inserted = self._insert_feedback(located)
                result.audit_inserted = self._insert_audit(located)
                result.dead_lettered = self._insert_dead_letters(dead)
                self._store_offsets(result.offsets)
        except duckdb.Error as exc:
            raise StoreError(f"writing a batch of {len(located)} events failed: {exc}") from exc
        inserted = result.interactions_inserted + result.feedback_inserted + result.audit_inserted
        result.duplicates = len(located) - inserted
        return result

    def _insert_interactions(self, located: Sequence[Located]) -> int:
        chosen = [loc for loc in located if isinstance(loc.event, InteractionEvent)]
        return self._insert_unique_events("interactions", chosen, _INTERACTION_FIELDS, "messages", _messages)

    def _insert_audit(self, located: Sequence[Located]) -> int:
        chosen = [loc for loc in located if isinstance(loc.event, AuditEvent)]
        return self._insert_unique_events("audit", chosen, _AUDIT_FIELDS, "details", _details)

    def _insert_unique_events(
        self,
        target: str,
        chosen: Sequence[Located],
        fields: Sequence[str],
        json_column: str,
        json_value: Callable[[AnyEvent], object],
    ) -> int:
        """Insert events new by ``event_id`` (the first of equal ones in the batch), one JSON column."""
        table = _columns(chosen, fields, **{json_column: lambda e: json.dumps(json_value(e))})
        return self._insert_arrow(
            f"batch_{target}",
            table,
            # the primary key's index skips stored events (no scan of the table); QUALIFY the batch's own
            f"INSERT OR IGNORE INTO {target} BY NAME "  # noqa: S608 - table and column names are this module's constants
            f"SELECT * EXCLUDE ({json_column}), {json_column}::JSON AS {json_column} FROM batch_{target} "
            "QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY kafka_offset) = 1",
        )

    def _insert_feedback(self, located: Sequence[Located]) -> int:
        chosen = [loc for loc in located if isinstance(loc.event, FeedbackEvent)]
        return self._insert_arrow(
            "batch_feedback",
            _columns(chosen, _FEEDBACK_FIELDS),
            # feedback_id is the key (a redelivered event has the same one); the index skips stored ones
            "INSERT OR IGNORE INTO feedback BY NAME SELECT * FROM batch_feedback "
            "QUALIFY row_number() OVER (PARTITION BY feedback_id ORDER BY kafka_offset) = 1",
        )

    def _insert_dead_letters(self, dead: Sequence[DeadLetter]) -> int:
        if not dead:
            return 0
        table = pa.table(
            {
                "topic": [d.topic for d in dead],
                "partition": [d.partition for d in dead],
                "kafka_offset": [d.offset for d in dead],
                "reason": [d.reason for d in dead],
                "size_bytes": [d.size_bytes for d in dead],
            }
        )
        return self._insert_arrow(
            "batch_dead",
            table,
            "INSERT OR IGNORE INTO dead_letters BY NAME SELECT * FROM batch_dead",
        )

    def _insert_arrow(self, name: str, table: pa.Table | None, sql: str) -> int:
        if table is None:
            return 0
        self._con.register(name, table)
        try:
            return self._inserted(sql)
        finally:
            self._con.unregister(name)

    def _store_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        if offsets:  # one row per partition, a handful per batch
            self._con.executemany(
                "INSERT OR REPLACE INTO kafka_offsets (topic, partition, next_offset, committed_at) "
                "VALUES (?, ?, ?, current_timestamp)",
                [[topic, partition, offset] for (topic, partition), offset in offsets.items()],
            )

    def _inserted(self, sql: str) -> int:
        row = self._con.execute(sql).fetchone()  # DuckDB answers an INSERT with its row count
        return int(row[0]) if row else 0

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._con.execute(sql, list(params)).fetchall()  # a result must be consumed before the next

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a trusted query on the live file; rows as dicts."""
        with self._lock:
            cursor = self._con.cursor().execute(sql, list(params))  # own cursor: safe beside the sink
            names = [d[0] for d in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """Run a trusted query on the live file; the result as an Arrow table."""
        with self._lock:
            return self._con.cursor().sql(sql, params=list(params)).to_arrow_table()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one trusted statement (a retention delete, a watermark update) under the write lock."""
        with self._lock:
            self._run(sql, params)

    def compact(self) -> None:
        """Rewrite the file without free blocks, so deleted rows' bytes do not linger on disk.

        DuckDB reuses freed blocks but does not wipe them; copying the database into a new file
        and swapping it in leaves nothing of the deleted rows behind.
        """
        with self._lock:
            tmp = self.path.with_name(self.path.name + ".compact")
            tmp.unlink(missing_ok=True)
            try:
                row = self._con.execute("SELECT current_database()").fetchone()
                self._run(f"ATTACH '{tmp}' AS compacted")
                self._run(f'COPY FROM DATABASE "{row[0] if row else ""}" TO compacted')
                self._run("DETACH compacted")
            except duckdb.Error as exc:
                tmp.unlink(missing_ok=True)
                raise StoreError(f"compacting {self.path} failed: {exc}") from exc
            self._con.close()
            os.replace(tmp, self.path)  # atomic: a crash leaves the old file or the new, never half
            Path(str(self.path) + ".wal").unlink(missing_ok=True)  # the old file's log, already checkpointed
            self._con = duckdb.connect(str(self.path), config=self._config)

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


def _columns(
    located: Sequence[Located], fields: Sequence[str], **computed: Callable[[AnyEvent], Any]
) -> pa.Table | None:
    """The events as an Arrow table, built column by column (much faster than a dict per row)."""
    if not located:
        return None
    events = [loc.event for loc in located]
    # attrgetter reads all fields of an event in one C call; zip(*) turns the rows into columns
    rows = list(map(attrgetter(*fields), events))  # every table has several fields: tuples
    columns: dict[str, list[Any]] = {name: list(col) for name, col in zip(fields, zip(*rows, strict=True), strict=True)}
    for name, fn in computed.items():
        columns[name] = [fn(e) for e in events]
    columns["kafka_partition"] = [loc.partition for loc in located]
    columns["kafka_offset"] = [loc.offset for loc in located]
    return pa.table(columns)


def _messages(event: AnyEvent) -> list[dict[str, str]]:
    assert isinstance(event, InteractionEvent)
    return [{"role": m.role, "content": m.content} for m in event.messages]


def _details(event: AnyEvent) -> object:
    assert isinstance(event, AuditEvent)
    return event.details
