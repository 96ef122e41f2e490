"""The lake: DuckDB's rows exported to Parquet for analysts, and retention that really deletes.

Layout, Hive-partitioned by the UTC day of each event's ``ts``::

    <lake>/raw/<table>/day=2026-11-29/part-<since>-0.parquet        the text as stored (admins only)
    <lake>/redacted/<table>/day=2026-11-29/part-<since>-0.parquet   the same rows, PII redacted
    <lake>/{raw,redacted}/<table>/_schema                          no rows: the table's exported columns

Every export writes each table's ``_schema`` (a Parquet file without rows, named so that neither
``day=*/*.parquet`` nor ``**/*.parquet`` takes it), so an analyst's view of a table that has no rows
in the lake yet still has all its columns and answers zero rows.

An export takes the rows whose ``ingested_at`` is later than the table's high-water mark
(``lake_exports``), writes them, then moves the mark. Files are named by the mark they start
from, so an export interrupted before the mark moved is redone over the same file names: one
store never puts a row in the lake twice. Redaction (``feedback.pii``) runs here, in batches,
never on ingest.

Sink shards (several sink processes in one consumer group, each with its own DuckDB file) export
into one lake root, their file names carrying the shard (``part-<shard>-<since>-0.parquet``), so
no shard overwrites another's files. Around a rebalance two shards may both hold an event; the
analyst views (``feedback.sandbox``) keep one row per key. Each export also returns the Kafka
offsets its store held before it read the rows: the lake then holds every record before them,
which is what a shard commits to Kafka.

Retention removes whole days: their directories in both trees, their rows in DuckDB (rebuilding
the report rollups, ``feedback.rollup``, in the same transaction), and then compacts the DuckDB
file so the deleted text does not linger in free blocks. The durable record is DuckDB and this
lake; Kafka keeps events only for ``kafka.topics.retention_hours``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from feedback.pii import redact, redact_batch
from feedback.rollup import execute_in_transaction, rebuild_sql
from feedback.store import DuckDBStore

RAW, REDACTED = "raw", "redacted"
SCHEMA_FILE = "_schema"  # in each table's folder: the columns of its files, without ``day`` (module docstring)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Free-text columns redacted per table; ``messages`` is JSON whose contents are redacted.
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "interactions": ("unit_id", "messages", "completion", "error"),
    "feedback": ("user_id", "comment", "correction"),
    "audit": ("resource", "reason", "details"),
}

_DAY = "strftime(timezone('UTC', ts), '%Y-%m-%d')"
# JSON columns leave as text: Parquet readers then need no JSON extension
_SELECT = {
    "interactions": "SELECT * REPLACE (messages::VARCHAR AS messages), "
    "strftime(timezone('UTC', ts), '%Y-%m-%d') AS day FROM interactions",
    "feedback": "SELECT *, strftime(timezone('UTC', ts), '%Y-%m-%d') AS day FROM feedback",
    "audit": "SELECT * REPLACE (details::VARCHAR AS details), "
    "strftime(timezone('UTC', ts), '%Y-%m-%d') AS day FROM audit",
}


@dataclass
class ExportResult:
    """Rows written to the lake per table by one export."""

    rows: dict[str, int] = field(default_factory=dict)
    # per (topic, partition): the next offset; the lake holds every record before it
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass
class PurgeResult:
    """What retention removed."""

    days: list[str] = field(default_factory=list)  # the day partitions removed from the lake
    cutoffs: dict[str, str] = field(default_factory=dict)  # per table: days before this one were purged
    rows: dict[str, int] = field(default_factory=dict)  # rows deleted from DuckDB per table


def redact_messages(messages_json: str | None) -> str | None:
    """A ``messages`` JSON array with each message's content redacted (the JSON stays valid)."""
    if messages_json is None:
        return None
    messages = json.loads(messages_json)
    for message in messages:
        message["content"] = redact(message.get("content") or "")
    return json.dumps(messages)


def redact_table(table: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    """``table`` with the given text columns PII-redacted."""
    for name in columns:
        values = table.column(name).to_pylist()
        cleaned = [redact_messages(v) for v in values] if name == "messages" else redact_batch(values)
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(cleaned, pa.string()))
    return table


class Lake:
    """Exports a store's rows to the lake directory and applies retention to both.

    ``shard`` names this store's files when several sink shards share the lake ("": the only one).
    """

    def __init__(self, store: DuckDBStore, root: Path, *, shard: str = "") -> None:
        self._store = store
        self.root = root
        self._prefix = f"part-{shard}-" if shard else "part-"
        self._exporting = threading.Lock()  # the lake thread and a stopping sink shard may both export

    def export(self) -> ExportResult:
        """Write every row ingested since the last export, raw and redacted; move the marks."""
        with self._exporting:
            # taken first: every row of a record before these offsets is committed, so read below
            return self._export(ExportResult(offsets=self._store.committed_offsets()))

    def _export(self, result: ExportResult) -> ExportResult:
        marks = {r["table_name"]: r["exported_through"] for r in self._store.query("SELECT * FROM lake_exports")}
        self._write_schemas()
        for table, columns in TEXT_COLUMNS.items():
            since = marks.get(table, EPOCH)
            data = self._store.arrow(_SELECT[table] + " WHERE ingested_at > ? ORDER BY ingested_at", [since])
            if data.num_rows == 0:
                continue
            through = data.column("ingested_at")[-1].as_py()
            name = f"{self._prefix}{int(since.timestamp() * 1_000_000)}-{{i}}.parquet"
            self._write(data, self.root / RAW / table, name)
            self._write(redact_table(data, columns), self.root / REDACTED / table, name)
            self._store.execute(
                "INSERT OR REPLACE INTO lake_exports (table_name, exported_through, exported_at) "
                "VALUES (?, ?, current_timestamp)",
                [table, through],
            )
            result.rows[table] = data.num_rows
        return result

    def _write_schemas(self) -> None:
        """Each table's ``_schema`` in both trees, written when missing or when the columns changed."""
        for table, columns in TEXT_COLUMNS.items():
            raw = self._store.arrow(f"SELECT * EXCLUDE (day) FROM ({_SELECT[table]}) WHERE false")  # noqa: S608
            for tree, empty in ((RAW, raw), (REDACTED, redact_table(raw, columns))):
                path = self.root / tree / table / SCHEMA_FILE
                if path.exists() and pq.read_schema(path).equals(empty.schema):
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                staged = path.with_name(f".{SCHEMA_FILE}-{uuid.uuid4().hex}")
                pq.write_table(empty, staged)
                os.replace(staged, path)  # a reader never sees half a file

    def _write(self, data: pa.Table, directory: Path, basename: str) -> None:
        """Write day partitions into a staging folder, then move each file into place atomically.

        A reader (the sandbox) then never sees a half-written file, and an export that dies
        midway leaves nothing in the lake; a redone export replaces its own files.
        """
        staging = self.root / ".staging" / uuid.uuid4().hex
        try:
            ds.write_dataset(
                data,
                staging,
                format="parquet",
                partitioning=["day"],
                partitioning_flavor="hive",
                basename_template=basename,
            )
            for file in sorted(staging.rglob("*.parquet")):
                target = directory / file.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(file, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def purge(self, keep_days: int, today: date | None = None, *, audit_keep_days: int | None = None) -> PurgeResult:
        """Remove every whole day older than its table's retention from the lake and DuckDB, then compact.

        ``keep_days`` applies to interactions and feedback; the audit trail keeps ``audit_keep_days``
        (default: ``keep_days`` as well).
        """
        today = today or datetime.now(UTC).date()
        keep = dict.fromkeys(TEXT_COLUMNS, keep_days) | {"audit": audit_keep_days or keep_days}
        result = PurgeResult(cutoffs={t: date.fromordinal(today.toordinal() - d).isoformat() for t, d in keep.items()})
        for day_dir in sorted(self.root.glob("*/*/day=*")):
            day, table = day_dir.name.removeprefix("day="), day_dir.parent.name
            if day < result.cutoffs.get(table, ""):
                with contextlib.suppress(FileNotFoundError):  # another shard sharing the lake removed it first
                    shutil.rmtree(day_dir)
                if day not in result.days:
                    result.days.append(day)
        deletes = []
        for table, cutoff in result.cutoffs.items():
            where = f"{_DAY} < '{cutoff}'"
            count = self._store.query(f"SELECT count(*) AS n FROM {table} WHERE {where}")[0]["n"]  # noqa: S608
            if count:
                deletes.append(f"DELETE FROM {table} WHERE {where}")  # noqa: S608
            result.rows[table] = int(count)
        if deletes:  # the report rollups are rebuilt from what is left, in the deletes' transaction
            execute_in_transaction(self._store, ";\n".join([*deletes, rebuild_sql()]), "retention")
            self._store.compact()
        return result
