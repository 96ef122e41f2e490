"""The columnar write path: a batch of validated events as a few Arrow columns, parsed by DuckDB.

The sink validates each event once, in Python (``feedback.codec``), which hands back JSON encoded
from the validated values. Here a batch becomes one Arrow table per target table with four
columns (that JSON, ``ts``, the Kafka partition and offset); DuckDB's own JSON reader
(``json_transform``, outside Python's GIL) turns the JSON into the table's columns inside the
INSERT. ``ts`` comes from the validated event rather than from the text, so every timestamp is
stored exactly as the validator read it.

Deduplication: equal keys inside a batch are dropped as the batch is built (the first one read
wins); against stored rows, the batch is inserted optimistically and, only when the primary key
refuses it (a redelivery), inserted again with ``INSERT OR IGNORE`` in a fresh transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from feedback.codec import FAST_TYPES

TABLES = {"interaction": "interactions", "feedback": "feedback", "audit": "audit"}  # event type -> table
_KEYS = {"interactions": "event_id", "feedback": "feedback_id", "audit": "event_id"}  # the dedup key per table
_TS = pa.timestamp("us", tz="UTC")  # a naive ts (only pydantic's lax path lets one through) counts as UTC


@dataclass(slots=True)
class TableColumns:
    """One target table's rows of a batch, column by column."""

    raw: list[bytes] = field(default_factory=list)
    ts: list[datetime] = field(default_factory=list)
    partition: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def arrow(self) -> pa.Table:
        """The columns as an Arrow table (JSON as text: DuckDB parses it without a copy)."""
        return pa.table(
            {
                "raw": pa.array(self.raw, pa.binary()).cast(pa.string()),  # the validator checked UTF-8
                "ts": pa.array(self.ts, _TS),
                "kafka_partition": pa.array(self.partition, pa.int32()),
                "kafka_offset": pa.array(self.offset, pa.int64()),
            }
        )


@dataclass(slots=True)
class EventBatch:
    """Validated events of one poll grouped by table, the partitions' next offsets, and counts."""

    tables: dict[str, TableColumns] = field(default_factory=lambda: {t: TableColumns() for t in TABLES.values()})
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    in_batch_duplicates: int = 0

    def add(self, event: Any, raw: bytes, partition: int, offset: int) -> None:
        """Add a validated event (a ``codec`` struct) and its JSON, unless its key is already here."""
        table = TABLES[FAST_TYPES[type(event)]]
        columns = self.tables[table]
        key = getattr(event, _KEYS[table])
        if key in columns.keys:
            self.in_batch_duplicates += 1
            return
        columns.keys.add(key)
        columns.raw.append(raw)
        columns.ts.append(event.ts)
        columns.partition.append(partition)
        columns.offset.append(offset)

    def advance(self, topic: str, partition: int, next_offset: int) -> None:
        """Record the next offset to read for a partition (never moving it back)."""
        key = (topic, partition)
        self.offsets[key] = max(self.offsets.get(key, 0), next_offset)

    def __len__(self) -> int:
        return sum(len(c.raw) for c in self.tables.values()) + self.in_batch_duplicates


class TableWriter:
    """The INSERT statements for one table, built from its columns in DuckDB and the event's fields."""

    def __init__(self, con: duckdb.DuckDBPyConnection, table: str, event_type: str) -> None:
        struct = next(t for t, name in FAST_TYPES.items() if name == event_type)
        fields = set(struct.__struct_fields__) - {"ts"}
        rows = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index", [table]
        ).fetchall()
        spec = json.dumps({name: kind for name, kind in rows if name in fields})
        self.view = f"batch_{table}"
        select = f"SELECT unnest(json_transform(raw, '{spec}')), ts, kafka_partition, kafka_offset FROM {self.view}"  # noqa: S608 - names are this module's constants
        self.insert = f"INSERT INTO {table} BY NAME {select}"
        self.insert_new = f"INSERT OR IGNORE INTO {table} BY NAME {select}"  # the key's index skips stored rows
