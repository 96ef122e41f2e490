"""Request and response models of the worker's HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class PartitionLag(BaseModel):
    """How far the sink is behind on one partition."""

    topic: str
    partition: int
    committed: int | None  # next offset stored in DuckDB with the rows; None: nothing read yet
    end: int | None  # Kafka's end offset (the next offset to be written); None: Kafka unreachable
    lag: int | None  # records written to Kafka but not yet in DuckDB


class SinkStatus(BaseModel):
    """``GET /v1/sink/status``: lag, rows and dead letters, read without opening the file twice."""

    partitions: list[PartitionLag]
    total_lag: int | None
    rows: dict[str, int]  # rows held in DuckDB per table
    dead_lettered: int  # records refused, ever (the dead_letters table)
    dead_letter_reasons: dict[str, int]  # refused since start, by class (invalid, oversized, ...)
    last_commit: str | None  # ISO time of the latest committed batch
    kafka_error: str | None  # why end offsets are unknown, when they are


class AnalyticsQuery(BaseModel):
    """``POST /v1/analytics/query``: one SELECT over the lake's views."""

    sql: str = Field(min_length=1, max_length=100_000)
    max_rows: int | None = Field(default=None, ge=1, le=1_000_000)  # default: worker.query_max_rows


class AnalyticsResult(BaseModel):
    """The rows (as objects), their columns, and whether the row limit cut them."""

    columns: list[str]
    rows: list[dict[str, Any]]
    truncated: bool


class AuditRecord(BaseModel):
    """One row of ``GET /v1/audit``: who did what, when, to what, with what outcome and why."""

    event_id: str
    ts: datetime
    actor: str
    action: str
    resource: str | None
    outcome: Literal["allowed", "denied", "error"]
    reason: str | None
    details: dict[str, Any]
