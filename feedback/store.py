"""The DuckDB store: the worker's single read-write connection to its database file.

Rows arrive in batches (``feedback.ingest``: validated JSON in Arrow columns, parsed by DuckDB)
and are inserted with one statement per table, never row by row. Each batch's Kafka offsets are
stored in the same transaction as its rows, so after a crash the sink resumes exactly after the
last committed batch; rows are also deduplicated on ``event_id`` (interactions, audit) and
``feedback_id`` (feedback), so a redelivered event is harmless.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from feedback.codec import to_fast
from feedback.errors import StoreError
from feedback.events import AnyEvent
from feedback.ingest import TABLES, EventBatch, TableWriter
from feedback.migrations import MIGRATIONS

_INSERT_DEAD = "INSERT OR IGNORE INTO dead_letters BY NAME SELECT * FROM batch_dead"  # once per Kafka position
_INSERT_OFFSETS = (
    "INSERT OR REPLACE INTO kafka_offsets (topic, partition, next_offset, committed_at) "
    "SELECT topic, partition, next_offset, current_timestamp FROM batch_offsets"
)


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
        self._writers = {table: TableWriter(self._con, table, kind) for kind, table in TABLES.items()}

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
        batch = EventBatch()
        for (topic, partition), offset in (offsets or {}).items():
            batch.advance(topic, partition, offset)
        for loc in located:
            batch.add(*to_fast(loc.event), loc.partition, loc.offset)
            batch.advance(loc.topic, loc.partition, loc.offset + 1)
        return self.write_events(batch, dead)

    def write_events(self, batch: EventBatch, dead: Sequence[DeadLetter] = ()) -> BatchResult:
        """Insert a validated batch (``feedback.ingest``), its dead letters and its offsets in one transaction."""
        result = BatchResult(offsets=dict(batch.offsets))
        for letter in dead:
            key = (letter.topic, letter.partition)
            result.offsets[key] = max(result.offsets.get(key, 0), letter.offset + 1)
        views = {self._writers[name].view: c.arrow() for name, c in batch.tables.items() if c.raw}
        if dead:
            views["batch_dead"] = _dead_letters(dead)
        if result.offsets:
            views["batch_offsets"] = _offsets(result.offsets)
        try:
            with self._lock:
                for view, table in views.items():  # registered outside the transaction: a failed one aborts
                    self._con.register(view, table)
                try:
                    inserted = self._write_views(views, result)
                finally:
                    for view in views:
                        self._con.unregister(view)
        except duckdb.Error as exc:
            raise StoreError(f"writing a batch of {len(batch)} events failed: {exc}") from exc
        result.interactions_inserted = inserted.get("interactions", 0)
        result.feedback_inserted = inserted.get("feedback", 0)
        result.audit_inserted = inserted.get("audit", 0)
        result.duplicates = len(batch) - sum(inserted.values())
        return result

    def _write_views(self, views: Mapping[str, pa.Table], result: BatchResult) -> dict[str, int]:
        writers = {name: w for name, w in self._writers.items() if w.view in views}
        if "batch_dead" not in views:  # the usual batch: one round trip, so one wait for the GIL
            statements = ["BEGIN TRANSACTION", *(w.insert for w in writers.values())]
            if "batch_offsets" in views:
                statements.append(_INSERT_OFFSETS)
            try:  # optimistic: a plain INSERT adds every row or fails on a stored key, and is cheaper
                self._con.execute(";\n".join([*statements, "COMMIT"])).fetchall()
                return {name: views[w.view].num_rows for name, w in writers.items()}
            except duckdb.Error as exc:
                self._con.execute("ROLLBACK").fetchall()
                if not isinstance(exc, duckdb.ConstraintException):
                    raise
        with self._transaction():  # a redelivery or dead letters: step by step, counting what is new
            inserted = {name: self._inserted(w.insert_new) for name, w in writers.items()}
            if "batch_dead" in views:
                result.dead_lettered = self._inserted(_INSERT_DEAD)
            if "batch_offsets" in views:
                self._run(_INSERT_OFFSETS)
        return inserted

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


def _dead_letters(dead: Sequence[DeadLetter]) -> pa.Table:
    return pa.table(
        {
            "topic": [d.topic for d in dead],
            "partition": [d.partition for d in dead],
            "kafka_offset": [d.offset for d in dead],
            "reason": [d.reason for d in dead],
            "size_bytes": [d.size_bytes for d in dead],
        }
    )


def _offsets(offsets: Mapping[tuple[str, int], int]) -> pa.Table:
    return pa.table(
        {
            "topic": [topic for topic, _ in offsets],
            "partition": pa.array([partition for _, partition in offsets], pa.int32()),
            "next_offset": pa.array(list(offsets.values()), pa.int64()),
        }
    )
