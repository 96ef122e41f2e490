"""Analyst SQL escape attempts through the worker's API, per role, on a running worker (real broker, real lake).

Each attempt tries to write, to read a file outside the lake (the DuckDB file itself, a file beside
the lake, ``/proc``, the network), to reach the raw text or the audit trail by another route than
their views (``query()``, a path to their Parquet files), or to unlock the sandbox. Readers of the
redacted lake (developer, analyst) are refused every one; an admin may read the raw and audit views
and their files, and is refused the rest like anyone; a user's key and no key never reach the
sandbox. Every refusal is on the audit trail with the key that tried it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import Keys, bearer, label
from fastapi import FastAPI
from pipeline_events import feedback, interaction, produce, wait_until, worker_settings_in

from feedback.apikeys import NO_KEY
from feedback.settings import KafkaSettings
from services.worker.app import create_app

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]

OUTSIDE = "access outside the lake is not allowed: Permission Error"
RAW = "raw-text views (*_raw) need an admin key; analysts see the redacted views"
AUDIT = "the audit trail (audit, audit_raw) is for admins only; it needs an admin key"
ONLY_SELECT = "only SELECT queries are allowed (WITH ... SELECT included); this is a"
ALLOWED = "allowed"

Outcome = tuple[
    int, str
]  # a refusal (403, the reason after "query refused: "), a failure (400, after "query failed: ")


def anyone(sql: str, outcome: Outcome) -> tuple[str, Outcome, Outcome]:
    """An attempt refused alike to readers of the redacted lake and to admins."""
    return sql, outcome, outcome


# (sql with {lake} {db} {outside} placeholders, what a reader of the redacted lake gets, what an admin gets)
ATTACKS: list[tuple[str, Outcome, Outcome]] = [
    anyone("COPY interactions TO '{outside}.copy'", (403, f"{ONLY_SELECT} COPY statement")),
    anyone("EXPORT DATABASE '{outside}.export'", (403, f"{ONLY_SELECT} EXPORT statement")),
    anyone("ATTACH '{db}' AS worker", (403, f"{ONLY_SELECT} ATTACH statement")),
    anyone("INSTALL httpfs", (403, f"{ONLY_SELECT} LOAD statement")),
    anyone("SET lock_configuration = false", (403, f"{ONLY_SELECT} SET statement")),
    anyone("SELECT 1; DROP VIEW interactions", (403, "exactly one statement is allowed, got 2")),
    anyone("WITH x AS (DELETE FROM interactions RETURNING *) SELECT * FROM x", (400, "BinderException")),
    anyone("SELECT * FROM read_blob('{db}')", (403, OUTSIDE)),
    anyone("SELECT * FROM read_csv('{outside}')", (403, OUTSIDE)),
    anyone("FROM '{outside}'", (403, OUTSIDE)),
    anyone("SELECT * FROM read_text('/proc/self/environ')", (403, OUTSIDE)),
    anyone("SELECT * FROM read_parquet('https://example.com/x.parquet')", (403, OUTSIDE)),
    anyone("SELECT * FROM duckdb_extensions()", (403, OUTSIDE)),
    ("SELECT count(*) AS n FROM interactions_raw", (403, RAW), (200, ALLOWED)),
    ("SELECT count(*) AS n FROM query('SELECT * FROM interactions_raw')", (403, RAW), (200, ALLOWED)),
    ("SELECT 1 AS n UNION ALL SELECT count(*) FROM audit", (403, AUDIT), (200, ALLOWED)),
    ("SELECT count(*) AS n FROM read_parquet('{lake}/raw/interactions/*/*.parquet')", (403, OUTSIDE), (200, ALLOWED)),
    ("SELECT count(*) AS n FROM read_parquet('{lake}/redacted/audit/*/*.parquet')", (403, OUTSIDE), (200, ALLOWED)),
]
READERS = ("developer", "analyst")  # roles with the analytics permission but not raw text


@pytest.fixture
def worker(kafka_isolated: KafkaSettings, tmp_path: Path, serve_app: ServeApp) -> Iterator[tuple[str, Path]]:
    """A running worker whose lake holds interactions, feedback and the audit trail; its URL and directory."""
    produce(kafka_isolated, [*(interaction(n) for n in range(4)), feedback(1)])
    (tmp_path / "outside.csv").write_text("secret\n42\n")
    settings = worker_settings_in(tmp_path, kafka_isolated, lake_export_interval_s=0.2)
    with serve_app(create_app(settings)) as url:
        yield url, tmp_path


def ask(url: str, key: str | None, sql: str) -> httpx.Response:
    headers = bearer(key) if key else {}
    return httpx.post(f"{url}/v1/analytics/query", json={"sql": sql}, headers=headers, timeout=60)


def outcome(response: httpx.Response) -> Outcome:
    """The status and what the detail starts with (the sandbox's reason), or ``allowed``."""
    if response.status_code == 200:
        return 200, ALLOWED
    detail = str(response.json()["detail"])
    for prefix in ("query refused: ", "query failed: "):
        detail = detail.removeprefix(prefix)
    return response.status_code, detail


def test_every_escape_attempt_is_refused_for_every_role(worker: tuple[str, Path], api_keys: Keys) -> None:
    url, root = worker
    admin = api_keys["admin"]
    counts = "SELECT (SELECT count(*) FROM interactions) AS i, (SELECT count(*) FROM audit) AS a"

    def exported() -> bool:  # the interactions, and the audit events of the worker's own requests
        rows = ask(url, admin, counts).json().get("rows", [])
        return bool(rows) and rows[0]["i"] == 4 and rows[0]["a"] > 0

    wait_until(exported, what="the lake export of the interactions and the audit trail")
    paths = {"lake": root / "lake", "db": root / "w.duckdb", "outside": root / "outside.csv"}
    got, want = {}, {}
    for template, as_reader, as_admin in ATTACKS:
        sql = template.format(**paths)
        for role in (*READERS, "admin"):
            status, detail = outcome(ask(url, api_keys[role], sql))
            got[(template, role)] = (status, detail[: len((as_admin if role == "admin" else as_reader)[1])])
            want[(template, role)] = as_admin if role == "admin" else as_reader
        user = ask(url, api_keys["user"], sql)
        got[(template, "user")] = (user.status_code, user.json()["detail"])
        want[(template, "user")] = (403, "the role 'user' may not analytics; admin or developer or analyst may")
        got[(template, "no key")] = outcome(ask(url, None, sql))
        want[(template, "no key")] = (401, NO_KEY)
    assert got == want
    assert not [p.name for p in root.iterdir() if p.name.startswith("outside.csv.")]  # nothing was written


def test_refused_attempts_are_on_the_audit_trail(worker: tuple[str, Path], api_keys: Keys) -> None:
    url, root = worker
    sql = ATTACKS[7][0].format(db=root / "w.duckdb")  # read_blob of the worker's DuckDB file
    attempts = {role: ask(url, api_keys[role], sql) for role in READERS}
    assert {role: r.status_code for role, r in attempts.items()} == {"developer": 403, "analyst": 403}

    def denied() -> list[dict[str, Any]]:
        params = {"action": "analytics.query", "outcome": "denied"}
        return list(httpx.get(f"{url}/v1/audit", params=params, headers=bearer(api_keys["admin"]), timeout=30).json())

    wait_until(lambda: len(denied()) == len(READERS), what="the refused queries on the audit trail")
    records = {str(r["actor"]): r for r in denied()}
    assert sorted(records) == sorted(label(api_keys, role) for role in READERS)
    for role in READERS:
        record = records[label(api_keys, role)]
        assert str(record["reason"]).startswith(f"query refused: {OUTSIDE}")
        assert record["details"]["role"] == role
