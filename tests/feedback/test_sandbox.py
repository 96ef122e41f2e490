"""The analyst sandbox on a real lake: redacted views, limits, and refusals with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_events import feedback, interaction

from feedback.errors import QueryFailed, QueryRefused, QueryTimeout
from feedback.events import AuditEvent, ChatMessage
from feedback.lake import Lake
from feedback.sandbox import QueryLimits, run_query
from feedback.store import DuckDBStore, Located

SECRET_EMAIL = "jane.doe@example.com"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sandbox")
    store = DuckDBStore(root / "db.duckdb")
    prompt = ChatMessage(role="user", content=f"write to {SECRET_EMAIL}")
    events = [interaction(n).model_copy(update={"messages": (prompt,)}) for n in range(30)]
    located = [Located(e, "interactions", 0, n) for n, e in enumerate(events)]
    located += [Located(e, "interactions", 0, 30 + n) for n, e in enumerate(events[:5])]  # redelivered
    located += [Located(feedback(n), "feedback", 0, n) for n in range(4)]
    store.write_batch(located)
    Lake(store, root / "lake").export()
    store.close()
    (root / "outside.csv").write_text("secret\n42\n")
    return root / "lake"


def test_select_over_redacted_views(lake: Path) -> None:
    result = run_query("SELECT count(*) AS n, any_value(messages) AS m FROM interactions", lake)
    assert result.table.to_pylist() == [{"n": 30, "m": '[{"role": "user", "content": "write to [EMAIL]"}]'}]
    assert result.truncated is False
    with_cte = run_query("WITH r AS (SELECT rating FROM feedback) SELECT sum(rating) AS s FROM r", lake)
    assert with_cte.table.to_pylist() == [{"s": 1 + 2 + 3 + 4}]


def test_a_table_not_yet_exported_has_its_columns_and_no_rows(lake: Path, tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "db.duckdb")
    store.write_batch([Located(feedback(1), "feedback", 0, 0)])
    Lake(store, tmp_path / "lake").export()  # feedback only: no interaction has arrived yet
    store.close()
    for view in ("interactions", "interactions_raw"):
        empty = run_query(f"SELECT * FROM {view}", tmp_path / "lake", admin=True)  # noqa: S608 - a view name
        exported = run_query(f"SELECT * FROM {view} LIMIT 0", lake, admin=True)  # noqa: S608 - a view name
        assert (empty.table.num_rows, empty.table.schema) == (0, exported.table.schema)
    answer = run_query("SELECT count(*) AS n, max(seed) AS top FROM interactions", tmp_path / "lake")
    assert answer.table.to_pylist() == [{"n": 0, "top": None}]


def test_row_limit_cuts_and_says_so(lake: Path) -> None:
    result = run_query("FROM interactions ORDER BY seed", lake, limits=QueryLimits(max_rows=7))
    assert result.table.num_rows == 7
    assert result.table.column("seed").to_pylist() == [0, 1, 2, 3, 4, 5, 6]
    assert result.truncated is True


def test_raw_views_only_for_admins(lake: Path) -> None:
    raw = run_query("SELECT DISTINCT messages FROM interactions_raw", lake, admin=True)
    assert raw.table.to_pylist() == [{"messages": f'[{{"role":"user","content":"write to {SECRET_EMAIL}"}}]'}]
    with pytest.raises(QueryRefused, match=r"raw-text views \(\*_raw\) need an admin key"):
        run_query("SELECT * FROM interactions_raw", lake)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("INSERT INTO interactions SELECT * FROM interactions", "this is a INSERT statement"),
        ("CREATE TABLE t AS SELECT 1", "this is a CREATE statement"),
        ("DELETE FROM interactions", "this is a DELETE statement"),
        ("ATTACH '/tmp/x.duckdb' AS x", "this is a ATTACH statement"),
        ("INSTALL httpfs", "this is a LOAD statement"),
        ("LOAD httpfs", "this is a LOAD statement"),
        ("COPY interactions TO '/tmp/out.csv'", "this is a COPY statement"),
        ("SET memory_limit = '100GB'", "this is a SET statement"),
        ("PRAGMA database_list", "this is a PRAGMA statement"),
        ("SELECT 1; DROP VIEW interactions", "exactly one statement is allowed, got 2"),
    ],
)
def test_statements_other_than_select_are_refused(lake: Path, sql: str, message: str) -> None:
    with pytest.raises(QueryRefused, match=message):
        run_query(sql, lake)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('{outside}')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_parquet('{lake}/raw/interactions/*/*.parquet')",
        "SELECT * FROM read_csv('{lake}/redacted/../../outside.csv')",
        "SELECT * FROM read_parquet('https://example.com/data.parquet')",
        "SELECT * FROM glob('/etc/*')",
    ],
)
def test_reaching_outside_the_redacted_lake_is_refused(lake: Path, sql: str) -> None:
    with pytest.raises(QueryRefused, match="access outside the lake is not allowed: Permission Error"):
        run_query(sql.format(lake=lake, outside=lake.parent / "outside.csv"), lake)


def test_errors_and_limits_are_named(lake: Path) -> None:
    with pytest.raises(QueryFailed, match="SQL syntax error"):
        run_query("SELEC 1", lake)
    with pytest.raises(QueryFailed, match="Table with name nope does not exist"):
        run_query("SELECT * FROM nope", lake)
    with pytest.raises(QueryTimeout, match="the query ran longer than 1 s and was stopped"):
        run_query("SELECT count(*) FROM range(1000000000000) a", lake, limits=QueryLimits(timeout_s=1))
    with pytest.raises(QueryFailed, match="Out of Memory"):
        run_query("SELECT list(i) FROM range(50000000) t(i)", lake, limits=QueryLimits(memory_limit="32MB"))


def test_the_audit_trail_is_for_admins_only(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "db.duckdb")
    event = AuditEvent(actor="admin", action="deployment.promote", resource="d-1")
    store.write_batch([Located(event, "audit", 0, 0), Located(feedback(1), "feedback", 0, 0)])
    Lake(store, tmp_path / "lake").export()
    store.close()
    lake = tmp_path / "lake"
    with pytest.raises(QueryRefused) as info:
        run_query("SELECT * FROM audit", lake)
    assert str(info.value) == "the audit trail (audit, audit_raw) is for admins only; it needs an admin key"
    with pytest.raises(QueryRefused, match=r"raw-text views \(\*_raw\) need an admin key"):
        run_query("SELECT * FROM audit_raw", lake)
    with pytest.raises(QueryRefused, match="access outside the lake is not allowed"):
        run_query(f"SELECT * FROM read_parquet('{lake}/redacted/audit/*/*.parquet')", lake)  # noqa: S608 - the attack under test
    assert run_query("SELECT count(*) AS n FROM feedback", lake).table.to_pylist() == [{"n": 1}]
    admin = run_query("SELECT action, resource FROM audit", lake, admin=True)
    assert admin.table.to_pylist() == [{"action": "deployment.promote", "resource": "d-1"}]
