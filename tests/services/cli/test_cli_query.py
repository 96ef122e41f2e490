"""``flywheel query`` as an analyst runs it: a real process over a real lake, each output format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from pipeline_events import feedback, interaction

from feedback.lake import Lake
from feedback.store import DuckDBStore, Located


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-lake")
    store = DuckDBStore(root / "db.duckdb")
    store.write_batch([Located(interaction(n), "interactions", 0, n) for n in range(3)])
    store.write_batch([Located(feedback(1), "feedback", 0, 0)])
    Lake(store, root / "lake").export()
    store.close()
    return root / "lake"


def flywheel_query(lake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"FLYWHEEL_WORKER__LAKE_DIR": str(lake), "FLYWHEEL_SECURITY__ADMIN_TOKEN": "cli-admin"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "query", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


SQL = "SELECT seed, arm FROM interactions ORDER BY seed"


def test_table_csv_and_json_output(lake: Path) -> None:
    table = flywheel_query(lake, SQL)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        "seed  arm     ",
        "----  --------",
        "0     champion",
        "1     champion",
        "2     champion",
    ]
    as_csv = flywheel_query(lake, SQL, "--format", "csv")
    assert as_csv.stdout.splitlines() == ["seed,arm", "0,champion", "1,champion", "2,champion"]
    as_json = flywheel_query(lake, SQL, "--format", "json", "--max-rows", "2")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"seed": 0, "arm": "champion"},
        {"seed": 1, "arm": "champion"},
    ]
    assert "(cut at 2 rows; raise --max-rows to see more)" in as_json.stderr


def test_parquet_output(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.parquet"
    assert flywheel_query(lake, SQL).returncode == 0
    missing = flywheel_query(lake, SQL, "--format", "parquet")
    assert (missing.returncode, missing.stderr.strip()) == (2, "--format parquet needs --output FILE")
    result = flywheel_query(lake, SQL, "--format", "parquet", "--output", str(out))
    assert result.returncode == 0, result.stderr
    with duckdb.connect() as con:
        assert con.execute("SELECT seed FROM read_parquet(?)", [str(out)]).fetchall() == [(0,), (1,), (2,)]


def test_refusals_and_admin_token(lake: Path) -> None:
    refused = flywheel_query(lake, "DROP VIEW interactions")
    assert refused.returncode == 3
    assert (
        "query refused: only SELECT queries are allowed (WITH ... SELECT included); this is a DROP statement"
        in refused.stderr
    )
    raw = flywheel_query(lake, "SELECT count(*) AS n FROM interactions_raw", "--admin-token", "cli-admin")
    assert raw.stdout.splitlines()[-1].strip() == "3"
    bad = flywheel_query(lake, "SELECT 1", "--admin-token", "nope")
    assert (bad.returncode, bad.stderr.strip()) == (3, "the admin token is not valid")
    failed = flywheel_query(lake, "SELECT * FROM nowhere")
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
