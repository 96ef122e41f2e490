"""``GET /v1/audit``, ``flywheel audit`` and the worker's own audit events, on a running worker.

Real broker, real DuckDB file: audit events go to the audit topic, the worker's sink stores them,
the API reads them back; the worker records its own requests, its retention runs and the decision
engine's actions through its write-ahead log and Kafka like the gateway does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import Keys, bearer, label
from fastapi import FastAPI
from pipeline_events import interaction, produce, sink_audit_until, wait_until

from feedback.apikeys import NO_KEY
from feedback.audit import AuditTrail
from feedback.deployments import set_challenger
from feedback.events import AuditEvent
from feedback.model.runtime import model_name
from feedback.producer import open_producer
from feedback.settings import KafkaSettings, Settings
from feedback.store import DuckDBStore, Located
from services.cli.credentials import KEY_ENV
from services.worker.app import Deployments, create_app, run_refresh
from services.worker.audit import query_audit
from services.worker.audit_events import refresh_decided
from services.worker.refresh import Refresher

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
DAY = datetime(2026, 11, 1, 12, tzinfo=UTC)
SEEDED = [
    AuditEvent(actor="admin", action="deployment.set_challenger", resource="d-1", ts=DAY),
    AuditEvent(actor="admin", action="deployment.promote", resource="d-2", ts=DAY + timedelta(days=1)),
    AuditEvent(
        actor="decision-engine",
        action="refresh.decision",
        resource="2026-11-03",
        reason="the gate refused the candidate: held-out loss did not fall",
        ts=DAY + timedelta(days=2),
    ),
    AuditEvent(actor="alice", action="chat.completion", outcome="denied", reason="no", ts=DAY + timedelta(days=3)),
    AuditEvent(actor="admin", action="deployment.rollback", resource="d-2", ts=DAY + timedelta(days=4)),
]


def worker_settings(tmp_path: Path, kafka: KafkaSettings, **worker: Any) -> Settings:
    return Settings.model_validate(
        {
            "kafka": kafka.model_dump(),
            "duckdb": {"path": tmp_path / "w.duckdb"},
            "worker": {"poll_timeout_ms": 100, "lake_dir": tmp_path / "lake", "lake_export_interval_s": 3600} | worker,
            "audit": {"query_max_rows": 50},
        }
    )


def audit(url: str, headers: dict[str, str], **params: Any) -> httpx.Response:
    return httpx.get(f"{url}/v1/audit", params=params, headers=headers, timeout=30)


def seen(url: str, headers: dict[str, str], expected: int, **params: Any) -> Callable[[], bool]:
    return lambda: len(audit(url, headers, **params).json()) == expected


def flywheel_audit(url: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``flywheel audit --url URL ARGS...`` with ``key`` in the environment."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "audit", "--url", url, *args],
        env=os.environ | {KEY_ENV: key},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def seeded(kafka_isolated: KafkaSettings) -> KafkaSettings:
    produce(kafka_isolated, SEEDED)
    return kafka_isolated


def test_admins_query_the_audit_trail_with_filters(
    seeded: KafkaSettings, api_keys: Keys, tmp_path: Path, serve_app: ServeApp
) -> None:
    admin = bearer(api_keys["admin"])
    until = "2026-12-01T00:00:00Z"  # before anything the worker records about this test's own requests
    with serve_app(create_app(worker_settings(tmp_path, seeded))) as url:
        wait_until(seen(url, admin, 5, until=until), what="the seeded audit events")
        everything = audit(url, admin, until=until).json()
        by_filter = {
            name: [row["resource"] for row in audit(url, admin, **({"until": until} | params)).json()]
            for name, params in {
                "actor": {"actor": "decision-engine"},
                "action": {"action": "deployment.promote"},
                "prefix": {"action": "deployment.*"},
                "resource": {"resource": "d-2"},
                "outcome": {"outcome": "denied"},
                "window": {"since": "2026-11-02T12:00:00+00:00", "until": "2026-11-04T12:00:00+00:00"},
                "limit": {"limit": 2},
            }.items()
        }
        refused = {
            "no key": audit(url, {}),
            "analyst": audit(url, bearer(api_keys["analyst"])),
            "limit": audit(url, admin, limit=51),
            "window": audit(url, admin, since="2026-11-05T00:00:00", until="2026-11-01T00:00:00"),
            "outcome": audit(url, admin, outcome="maybe"),
            "since": audit(url, admin, since="yesterday"),
        }
        wait_until(seen(url, admin, 6, action="audit.query", outcome="denied"), what="the refusals' own audit events")
        denied = audit(url, admin, action="audit.query", outcome="denied").json()
    assert [row["action"] for row in everything] == [e.action for e in reversed(SEEDED)]  # newest first
    assert everything[2] == {
        "event_id": SEEDED[2].event_id,
        "ts": "2026-11-03T12:00:00Z",
        "actor": "decision-engine",
        "action": "refresh.decision",
        "resource": "2026-11-03",
        "outcome": "allowed",
        "reason": "the gate refused the candidate: held-out loss did not fall",
        "details": {},
    }
    assert by_filter == {
        "actor": ["2026-11-03"],
        "action": ["d-2"],
        "prefix": ["d-2", "d-2", "d-1"],
        "resource": ["d-2", "d-2"],
        "outcome": [None],
        "window": ["2026-11-03", "d-2"],
        "limit": ["d-2", None],
    }
    assert {name: r.status_code for name, r in refused.items()} == {
        "no key": 401,
        "analyst": 403,
        "limit": 400,
        "window": 400,
        "outcome": 422,
        "since": 422,
    }
    assert refused["no key"].json() == {"detail": NO_KEY}
    assert refused["analyst"].json() == {"detail": "the role 'analyst' may not audit; admin may"}
    assert refused["limit"].json() == {"detail": "limit: at most 50 rows per request (audit.query_max_rows)"}
    assert refused["window"].json() == {"detail": "since must be earlier than until"}
    assert refused["outcome"].json()["detail"][0]["loc"] == ["query", "outcome"]
    assert refused["since"].json()["detail"][0]["loc"] == ["query", "since"]
    admin_label = label(api_keys, "admin")
    assert [(row["actor"], row["details"]["status"]) for row in denied] == [
        (admin_label, 422),
        (admin_label, 422),
        (admin_label, 400),
        (admin_label, 400),
        (label(api_keys, "analyst"), 403),
        ("anonymous", 401),
    ]
    assert denied[-1]["reason"] == NO_KEY


def test_analytics_queries_are_recorded_with_their_sql_and_row_count(
    kafka_isolated: KafkaSettings, api_keys: Keys, tmp_path: Path, serve_app: ServeApp
) -> None:
    admin, analyst = bearer(api_keys["admin"]), bearer(api_keys["analyst"])
    sql = "SELECT count(*) AS n FROM interactions"
    with serve_app(create_app(worker_settings(tmp_path, kafka_isolated))) as url:
        ok = httpx.post(f"{url}/v1/analytics/query", json={"sql": sql}, headers=analyst, timeout=30)
        hidden = httpx.post(
            f"{url}/v1/analytics/query", json={"sql": "SELECT * FROM audit"}, headers=analyst, timeout=30
        )
        wait_until(seen(url, admin, 2, action="analytics.query"), what="the queries' audit events")
        rows = audit(url, admin, action="analytics.query").json()
        cli = flywheel_audit(url, api_keys["admin"], "--action", "analytics.*")
        wrong = flywheel_audit(url, api_keys["admin"], "--limit", "51")
    assert (ok.status_code, ok.json()["rows"], hidden.status_code) == (200, [{"n": 0}], 403)
    assert hidden.json() == {
        "detail": "query refused: the audit trail (audit, audit_raw) is for admins only; it needs an admin key"
    }
    refused, allowed = rows
    assert (allowed["actor"], allowed["outcome"], allowed["reason"]) == (label(api_keys, "analyst"), "allowed", None)
    assert {k: allowed["details"][k] for k in ("sql", "rows", "truncated", "raw_text", "role")} == {
        "sql": sql,
        "rows": 1,
        "truncated": False,
        "raw_text": False,
        "role": "analyst",
    }
    assert (refused["outcome"], refused["details"]["sql"]) == ("denied", "SELECT * FROM audit")
    assert refused["reason"] == hidden.json()["detail"]
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0].split() == ["ts", "actor", "action", "resource", "outcome", "reason", "details"]
    assert [line.split()[1:6] for line in lines[2:]] == [
        [*label(api_keys, "analyst").split(), "analytics.query", "/v1/analytics/query", "denied"],
        [*label(api_keys, "analyst").split(), "analytics.query", "/v1/analytics/query", "allowed"],
    ]
    assert wrong.returncode == 1
    assert "refused (400): limit: at most 50 rows per request (audit.query_max_rows)" in wrong.stderr


def test_retention_purges_old_audit_rows_and_records_its_run(
    kafka_isolated: KafkaSettings, api_keys: Keys, tmp_path: Path, serve_app: ServeApp
) -> None:
    admin = bearer(api_keys["admin"])
    today = datetime.now(UTC).date()
    old, kept = datetime.now(UTC) - timedelta(days=200), datetime.now(UTC) - timedelta(days=100)
    store = DuckDBStore(tmp_path / "w.duckdb")
    store.write_batch(
        [
            Located(AuditEvent(actor="old-admin", action="deployment.promote", ts=old), "seeded", 0, 0),
            Located(AuditEvent(actor="kept-admin", action="deployment.promote", ts=kept), "seeded", 0, 1),
            Located(interaction(1).model_copy(update={"ts": old}), "seeded", 0, 2),
        ]
    )
    store.close()
    settings = worker_settings(tmp_path, kafka_isolated, lake_export_interval_s=0.2)
    with serve_app(create_app(settings)) as url:
        wait_until(seen(url, admin, 1, action="retention.purge"), what="the retention run's audit event")
        [run] = audit(url, admin, action="retention.purge").json()
        actors = {row["actor"] for row in audit(url, admin, action="deployment.*").json()}
    cutoff = date.fromordinal(today.toordinal() - 180).isoformat()
    assert (run["actor"], run["resource"], run["outcome"]) == ("retention", "lake+duckdb", "allowed")
    assert run["details"] == {
        "retention_days": 180,
        "audit_retention_days": 180,
        "cutoffs": {"interactions": cutoff, "feedback": cutoff, "audit": cutoff},
        "days": [old.date().isoformat()],
        "rows": {"interactions": 1, "feedback": 0, "audit": 1},
    }
    assert actors == {"kept-admin"}


@pytest.fixture
def trail(kafka_isolated: KafkaSettings, tmp_path: Path) -> Iterator[AuditTrail]:
    settings = Settings.model_validate({"kafka": kafka_isolated.model_dump()})
    producer = open_producer(settings, tmp_path / "audit-wal")
    producer.start()
    yield AuditTrail(producer, kafka_isolated.topics.audit)
    producer.close()


def stored_audit(kafka: KafkaSettings, path: Path, expected: int) -> list[dict[str, Any]]:
    """The audit rows once the sink stored ``expected`` of them in a new DuckDB file, oldest first."""
    store = DuckDBStore(path)
    try:
        sink_audit_until(kafka, store, expected)
        return list(reversed(query_audit(store, {}, limit=100)))
    finally:
        store.close()


def test_the_decision_engine_and_the_scheduler_record_their_actions(
    kafka_isolated: KafkaSettings, tmp_path: Path, model_dir: Path, trail: AuditTrail
) -> None:
    settings = Settings.model_validate(
        {
            "kafka": kafka_isolated.model_dump(),
            "model": {"cache_dir": model_dir.parent, "registry_dir": tmp_path / "registry"},
            "refresh": {"work_dir": tmp_path / "refreshes"},
        }
    )
    deployments = Deployments(settings, trail)
    deployments.watcher.start()
    store = DuckDBStore(tmp_path / "refresh.duckdb")
    try:
        assert deployments.watcher.caught_up.wait(30)
        base = model_name(model_dir)
        deployments.publish(set_challenger(deployments.current(), f"{base}+abc", by="refresh"))
        refresher = Refresher(
            settings,
            store,
            deployment=deployments.current,
            publish=deployments.publish,
            echo=None,
            finished=lambda outcome: trail.record(refresh_decided(outcome)),
        )
        run_refresh(refresher, "2026-11-29", trail)  # as the schedule runs it
        run_refresh(refresher, "2026-11-29", trail)  # the same date again: refused
        outcome = refresher.registry.refresh("2026-11-29")["outcome"]
    finally:
        deployments.watcher.close()
        store.close()
    deployed, started, decided, refused = stored_audit(kafka_isolated, tmp_path / "audit.duckdb", 4)
    assert (deployed["actor"], deployed["action"], deployed["outcome"]) == (
        "decision-engine",
        "deployment.set_challenger",
        "allowed",
    )
    assert deployed["reason"] == "an automatic change by refresh"
    before, after = deployed["details"]["before"], deployed["details"]["after"]
    assert (before["challenger"], before["phase"], after["challenger"], after["phase"]) == (
        None,
        "champion-only",
        f"{base}+abc",
        "shadow",
    )
    assert (after["updated_by"], deployed["resource"]) == ("refresh", after["deployment_id"])
    assert (decided["actor"], decided["action"], decided["resource"]) == (
        "decision-engine",
        "refresh.decision",
        "2026-11-29",
    )
    assert decided["reason"] == outcome["message"]
    assert decided["details"] == {
        "key": "2026-11-29",
        "status": "no-op",
        "version": None,
        "model_version": None,
        "forced_by": None,
        "gate": None,
    }
    assert (started["actor"], started["action"], started["resource"], started["outcome"]) == (
        "scheduler",
        "refresh.start",
        "2026-11-29",
        "allowed",
    )
    assert (refused["actor"], refused["action"], refused["resource"], refused["outcome"]) == (
        "scheduler",
        "refresh.start",
        "2026-11-29",
        "denied",
    )
    assert "already ran" in refused["reason"]
