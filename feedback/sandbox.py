"""The analyst sandbox: untrusted SQL over the lake, in a separate process with its own DuckDB.

Layers, each of which alone would refuse the usual attacks:

1. The SQL must be exactly one SELECT statement (``WITH ... SELECT``, ``FROM t`` included):
   INSERT, CREATE, COPY, ATTACH, INSTALL, LOAD, SET, PRAGMA, EXPORT... are refused before running.
2. It runs in a fresh child process on an in-memory DuckDB instance that knows only views over the
   lake's Parquet files: ``interactions`` and ``feedback`` (PII-redacted), and for admins also
   ``audit``, ``interactions_raw``, ``feedback_raw`` and ``audit_raw`` (the audit trail is for
   admins only). File access is limited to the redacted interactions and feedback trees (the whole
   lake for admins) by ``allowed_directories`` with external access disabled, so
   ``read_csv('/etc/passwd')``, ``read_parquet('http://...')``, the raw tree or the audit files are
   permission errors; extensions cannot be installed or loaded; the configuration is locked.
3. The process has a memory limit (DuckDB's ``memory_limit``, no spilling to disk), returns at
   most ``max_rows`` rows, and is killed at the timeout.

Views deduplicate on ``event_id`` (``feedback_id`` for feedback), as views spanning several sink
shards must: around a rebalance two shards may both write an event (``feedback.lake``). Of equal
keys the view keeps the row ingested first, as one DuckDB file would.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from feedback.errors import QueryFailed, QueryRefused, QueryTimeout
from feedback.lake import SCHEMA_FILE

TABLES = {"interactions": "event_id", "feedback": "feedback_id", "audit": "event_id"}
ADMIN_ONLY = ("audit",)  # tables analysts never see, redacted or not
_FIRST_INGESTED = "PARTITION BY {key} ORDER BY ingested_at, event_id"  # of equal keys a view keeps the first row


@dataclass(frozen=True)
class QueryLimits:
    """Resource bounds of one analyst query."""

    timeout_s: float = 10.0
    memory_limit: str = "512MB"
    max_rows: int = 10_000


@dataclass(frozen=True)
class QueryResult:
    """The rows of an analyst query, as an Arrow table, and whether the row limit cut them."""

    table: pa.Table
    truncated: bool


def check_statement(sql: str) -> None:
    """Refuse anything but exactly one SELECT statement, naming what was found."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryFailed(f"SQL syntax error: {exc}") from exc
    if len(statements) != 1:
        raise QueryRefused(f"exactly one statement is allowed, got {len(statements)}")
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind != "SELECT":
        raise QueryRefused(f"only SELECT queries are allowed (WITH ... SELECT included); this is a {kind} statement")


def run_query(sql: str, lake: Path, *, admin: bool = False, limits: QueryLimits | None = None) -> QueryResult:
    """Run analyst SQL in a sandboxed child process; raise a QueryError subclass with the reason."""
    limits = limits or QueryLimits()
    check_statement(sql)
    context = _context()
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, sql, str(lake.resolve()), admin, limits), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(limits.timeout_s):
            raise QueryTimeout(f"the query ran longer than {limits.timeout_s:g} s and was stopped")
        outcome: tuple[str, Any] = parent.recv()
    except EOFError as exc:
        raise QueryFailed("the query process died (out of memory?)") from exc
    finally:
        parent.close()
        if process.is_alive():
            process.kill()
        process.join(timeout=10)
    kind, value = outcome
    if kind == "refused":
        raise QueryRefused(value)
    if kind == "failed":
        raise QueryFailed(value)
    table, truncated = value
    return QueryResult(table, truncated)


@cache
def _context() -> multiprocessing.context.ForkServerContext:
    """Children forked from a fork server: a clean, single-threaded interpreter of its own that has imported
    only this module (and the main module). Like a spawned interpreter, a query's process inherits none of
    the caller's memory (keys, caches), threads or open files; unlike one, it does not import DuckDB and
    Arrow again for every query."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])
    return context


def _child(conn: Connection, sql: str, lake: str, admin: bool, limits: QueryLimits) -> None:
    try:
        conn.send(("ok", _execute(sql, Path(lake), admin, limits)))
    except duckdb.PermissionException as exc:
        conn.send(("refused", f"access outside the lake is not allowed: {exc}"))
    except duckdb.CatalogException as exc:
        conn.send(("refused" if _admin_view(exc) and not admin else "failed", _catalog_message(exc, admin)))
    except duckdb.Error as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _admin_view(exc: duckdb.Error) -> bool:
    """Whether a missing table is one that only admins see (a raw view or the audit trail)."""
    return "_raw" in str(exc) or any(f"Table with name {table} " in str(exc) for table in ADMIN_ONLY)


def _catalog_message(exc: duckdb.Error, admin: bool) -> str:
    if "_raw" in str(exc) and not admin:
        return "raw-text views (*_raw) need an admin key; analysts see the redacted views"
    if _admin_view(exc) and not admin:
        return "the audit trail (audit, audit_raw) is for admins only; it needs an admin key"
    views = TABLES if admin else [t for t in TABLES if t not in ADMIN_ONLY]
    return f"{exc} (views: {', '.join(views)}{', and *_raw for admins' if admin else ''})"


def _execute(sql: str, lake: Path, admin: bool, limits: QueryLimits) -> tuple[pa.Table, bool]:
    con = sandbox_connection(lake, admin, limits.memory_limit)
    relation = con.sql(sql)  # a relation streams Arrow batches without the copy a DB-API cursor makes
    if relation is None:  # a SELECT always has a result; this only satisfies the type
        raise duckdb.InvalidInputException("the statement returned no result")
    reader = relation.to_arrow_reader(batch_size=min(limits.max_rows + 1, 10_000))
    batches, rows = [], 0
    for batch in reader:
        batches.append(batch)
        rows += batch.num_rows
        if rows > limits.max_rows:
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    return table.slice(0, limits.max_rows), rows > limits.max_rows


def sandbox_connection(lake: Path, admin: bool, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake's views, file access limited, configuration locked."""
    con = duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "memory_limit": memory_limit,
            "threads": 1,
            "temp_directory": "",  # no spilling to disk: the memory limit is a limit
        },
    )
    visible = {"": lake / "redacted"} | ({"_raw": lake / "raw"} if admin else {})
    tables = {t: key for t, key in TABLES.items() if admin or t not in ADMIN_ONLY}
    readable = [f"{root}/" for root in visible.values()] if admin else [f"{lake / 'redacted' / t}/" for t in tables]
    con.execute("SET allowed_directories = ?", [readable])
    con.execute("SET enable_external_access = false")
    for suffix, root in visible.items():
        for table, key in tables.items():
            if any((root / table).glob("day=*/*.parquet")):
                files = f"{root / table}/day=*/*.parquet"
                con.execute(  # names are this module's constants and the lake's own path
                    f"CREATE VIEW {table}{suffix} AS SELECT * FROM read_parquet('{files}', hive_partitioning = true, "  # noqa: S608
                    f"union_by_name = true) QUALIFY row_number() OVER ({_FIRST_INGESTED.format(key=key)}) = 1"
                )
            elif (root / table / SCHEMA_FILE).exists():  # no rows exported yet: every column, no rows
                con.execute(
                    f"CREATE VIEW {table}{suffix} AS SELECT *, NULL::DATE AS day "  # noqa: S608 - as above
                    f"FROM read_parquet('{root / table / SCHEMA_FILE}')"
                )
            else:  # a lake no export has written to: a view of its key alone, so queries still name real views
                con.execute(f"CREATE VIEW {table}{suffix} AS SELECT NULL AS {key} WHERE false")
    con.execute("SET lock_configuration = true")
    return con
