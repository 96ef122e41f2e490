"""``flywheel refresh`` against a real worker (real Kafka, DuckDB file, registry): dry run, now, refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
from api_keys import Keys, bearer
from fastapi import FastAPI
from test_cli import flywheel

from feedback.settings import KafkaSettings, Settings
from services.worker.app import create_app

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]


def test_refresh_dry_run_now_and_a_second_run_the_same_day(
    tmp_path: Path, kafka_isolated: KafkaSettings, api_keys: Keys, model_dir: Path, serve_app: ServeApp
) -> None:
    settings = Settings(
        kafka=kafka_isolated,
        duckdb={"path": tmp_path / "w.duckdb"},
        worker={"poll_timeout_ms": 100, "lake_dir": tmp_path / "lake"},
        model={"cache_dir": model_dir.parent, "registry_dir": tmp_path / "registry"},
        refresh={"work_dir": tmp_path / "refreshes"},
        scheduler={"enabled": False},
    )
    admin = {"FLYWHEEL_API_KEY": api_keys["admin"]}
    with serve_app(create_app(settings)) as url:
        today = httpx.post(f"{url}/v1/admin/refresh", json={"dry_run": True}, headers=bearer(api_keys["admin"]))
        key = today.json()["key"]
        dry = flywheel("refresh", "--dry-run", "--url", url, env=admin)
        now = flywheel("refresh", "--now", "--url", url, env=admin)
        again = flywheel("refresh", "--now", "--url", url, "--key", api_keys["admin"])
        ledger = flywheel("refresh", "--url", url, "--key", api_keys["developer"])
        forced = flywheel("refresh", "--now", "--force", "--url", url, env=admin)
        developer = flywheel("refresh", "--now", "--url", url, "--key", api_keys["developer"])
        anonymous = httpx.post(f"{url}/v1/admin/refresh", json={})
        wrong = httpx.post(f"{url}/v1/admin/refresh", json={}, headers=bearer("guess"))
        unknown = httpx.get(f"{url}/v1/refreshes/1999-01-01", headers=bearer(api_keys["developer"]))

    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["status"] == "dry-run"
    assert "a refresh now would be a no-op: nothing to train on" in dry.stderr
    assert now.returncode == 0, now.stderr
    assert (json.loads(now.stdout)["status"], json.loads(now.stdout)["run"]) == ("no-op", key)
    assert again.returncode == 1
    assert f"refused (409): the refresh of {key} already ran" in again.stderr
    assert ledger.returncode == 0
    assert [(r["key"], r["outcome"]["status"]) for r in json.loads(ledger.stdout)] == [(key, "no-op")]
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["run"] == f"{key}.2"
    assert developer.returncode == 1
    assert "refused (403): the role 'developer' may not refresh; admin may" in developer.stderr
    assert (anonymous.status_code, wrong.status_code, unknown.status_code) == (401, 401, 404)
    assert anonymous.json()["detail"] == "this endpoint needs an Authorization: Bearer <API key> header"


def test_refresh_options_that_exclude_each_other_and_an_unreachable_worker() -> None:
    both = flywheel("refresh", "--now", "--dry-run")
    force_alone = flywheel("refresh", "--force")
    unreachable = flywheel("refresh", "--now", "--url", "http://127.0.0.1:9")

    assert (both.returncode, force_alone.returncode) == (2, 2)
    assert "--now and --dry-run exclude each other" in both.stderr
    assert "--force only applies to --now" in force_alone.stderr
    assert unreachable.returncode == 3
    assert "the worker at http://127.0.0.1:9/v1/admin/refresh is not reachable" in unreachable.stderr
