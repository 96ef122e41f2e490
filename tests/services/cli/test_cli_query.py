"""``flywheel query`` as an analyst runs it: a real process over a real lake, each output format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from api_keys import Keys, kafka_env
from pipeline_events import feedback, interaction

from feedback.lake import Lake
from feedback.settings import KafkaSettings
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


@pytest.fixture
def analyst(kafka_isolated: KafkaSettings, api_keys: Keys) -> dict[str, str]:
    """The environment of an analyst's ``flywheel`` (its key, the test's broker and topics)."""
    return kafka_env(kafka_isolated) | {"FLYWHEEL_API_KEY": api_keys["analyst"]}


def flywheel_query(lake: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | env | {"FLYWHEEL_WORKER__LAKE_DIR": str(lake)}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "query", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


SQL = "SELECT seed, arm FROM interactions ORDER BY seed"


def test_table_csv_and_json_output(lake: Path, analyst: dict[str, str]) -> None:
    table = flywheel_query(lake, analyst, SQL)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        "seed  arm     ",
        "----  --------",
        "0     champion",
        "1     champion",
        "2     champion",
    ]
    as_csv = flywheel_query(lake, analyst, SQL, "--format", "csv")
    assert as_csv.stdout.splitlines() == ["seed,arm", "0,champion", "1,champion", "2,champion"]
    as_json = flywheel_query(lake, analyst, SQL, "--format", "json", "--max-rows", "2")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"seed": 0, "arm": "champion"},
        {"seed": 1, "arm": "champion"},
    ]
    assert "(cut at 2 rows; raise --max-rows to see more)" in as_json.stderr


def test_parquet_output(lake: Path, analyst: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "rows.parquet"
    assert flywheel_query(lake, analyst, SQL).returncode == 0
    missing = flywheel_query(lake, analyst, SQL, "--format", "parquet")
    assert (missing.returncode, missing.stderr.strip()) == (2, "--format parquet needs --output FILE")
    result = flywheel_query(lake, analyst, SQL, "--format", "parquet", "--output", str(out))
    assert result.returncode == 0, result.stderr
    with duckdb.connect() as con:
        assert con.execute("SELECT seed FROM read_parquet(?)", [str(out)]).fetchall() == [(0,), (1,), (2,)]


def test_refusals_and_keys(lake: Path, analyst: dict[str, str], api_keys: Keys) -> None:
    refused = flywheel_query(lake, analyst, "DROP VIEW interactions")
    assert refused.returncode == 3
    assert (
        "query refused: only SELECT queries are allowed (WITH ... SELECT included); this is a DROP statement"
        in refused.stderr
    )
    raw_sql = "SELECT count(*) AS n FROM interactions_raw"
    raw = flywheel_query(lake, analyst, raw_sql, "--key", api_keys["admin"])
    assert raw.stdout.splitlines()[-1].strip() == "3"
    raw_denied = flywheel_query(lake, analyst, raw_sql)
    assert raw_denied.returncode == 3
    assert "raw-text views (*_raw) need an admin key" in raw_denied.stderr
    bad = flywheel_query(lake, analyst, "SELECT 1", "--key", "nope")
    assert (bad.returncode, bad.stderr.strip()) == (3, "the bearer token is not a flywheel API key (fwk_<id>_<secret>)")
    user = flywheel_query(lake, analyst, "SELECT 1", "--key", api_keys["user"])
    assert (user.returncode, user.stderr.strip()) == (
        3,
        "the role 'user' may not analytics; admin or developer or analyst may",
    )
    no_key = flywheel_query(lake, analyst | {"FLYWHEEL_API_KEY": ""}, "SELECT 1")
    assert (no_key.returncode, no_key.stderr.strip()) == (
        3,
        "flywheel query needs an API key: --key or FLYWHEEL_API_KEY",
    )
    failed = flywheel_query(lake, analyst, "SELECT * FROM nowhere")
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
