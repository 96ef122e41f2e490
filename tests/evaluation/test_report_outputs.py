"""The report in its three formats through the real CLI process, and through the real worker's HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import Keys, bearer
from experiment_data import synthetic_rows, write_rows
from fastapi import FastAPI

from evaluation.significance import Moments, welch_t_test
from feedback.settings import KafkaSettings, Settings
from services.worker.app import create_app

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]


def flywheel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "report", *args],
        env=os.environ | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def db_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "flywheel.duckdb"
    parts = [
        synthetic_rows(phase="shadow", shadow=True, units=120, seed=1, day=0),
        synthetic_rows(phase="ab-10", share=0.1, units=1500, seed=2, day=7),
        synthetic_rows(experiment="exp-srm", phase="ab-10", share=0.3, units=800, seed=3),
        synthetic_rows(experiment="exp-empty", phase="ab-10", share=0.0, units=50, seed=4),
    ]
    write_rows(path, {k: [v for p in parts for v in p[k]] for k in parts[0]})
    return path


def test_table(db_file: Path) -> None:
    result = flywheel("exp-1", "--db", str(db_file))
    assert result.returncode == 0, result.stderr
    for text in ("experiment exp-1", "SRM ab-10", "positive_feedback_rate", "phase ab-10", "CUPED", "Mann-Whitney"):
        assert text in result.stdout


def test_json_has_every_number_with_inputs(db_file: Path) -> None:
    result = flywheel("exp-1", "--db", str(db_file), "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    assert [p["phase"] for p in data["phases"]] == ["shadow", "ab-10"]
    assert data["settings"]["alpha"] == 0.05
    assert data["settings"]["sequential_tuning"] == 5000.0
    metric = next(m for m in data["phases"][1]["metrics"] if m["name"] == "latency_ms")
    rel = metric["relative"]
    assert (rel["method"], rel["alpha"], rel["relative"]) == ("welch-t", 0.05, True)
    i = rel["inputs"]  # recompute from the inputs alone
    again = welch_t_test(Moments(i["n_a"], i["mean_a"], i["var_a"]), Moments(i["n_b"], i["mean_b"], i["var_b"]))
    assert again.p_value == pytest.approx(rel["p_value"], abs=1e-12)
    assert data["shadow"]["pairs"] > 0
    assert data["verdict"]["action"] in {"advance", "hold", "promote", "roll back"}
    assert len(data["phases"][1]["quantiles"]) == 3
    phase = data["phases"][1]
    assert phase["cuped"]["method"] == "welch-t-cuped"
    assert "theta" in phase["cuped"]["inputs"]
    assert list(phase["cuped_metrics"]) == [m["name"] for m in phase["metrics"]]
    assert phase["cuped_metrics"][data["settings"]["primary_metric"]] == phase["cuped"]
    assert phase["mann_whitney"]["n_a"] > 0
    assert phase["bootstrap_p95"]["resamples"] == 1000
    assert phase["timeline"][-1]["units"] == sum(phase["units"].values())


def test_html_is_self_contained(db_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = flywheel("exp-1", "--db", str(db_file), "--html", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert page.count("<svg") >= 3
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nope"], 1, "no experiment 'nope'"),
        (["exp-1", "--metric", "latncy"], 1, "unknown metric latncy"),
        (["exp-1", "--split", "90/20"], 1, "split '90/20' sums to 110, not 100"),
        (["exp-empty"], 1, "phase ab-10: the challenger arm has no data"),
    ],
)
def test_bad_input_gets_a_message(db_file: Path, args: list[str], code: int, message: str) -> None:
    result = flywheel(*args, "--db", str(db_file))
    assert (result.returncode, result.stdout) == (code, "")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file(tmp_path: Path) -> None:
    result = flywheel("exp-1", "--db", str(tmp_path / "none.duckdb"))
    assert result.returncode == 2
    assert "no DuckDB file at" in result.stderr


@pytest.mark.kafka
def test_worker_serves_cached_reports(
    kafka_isolated: KafkaSettings, api_keys: Keys, db_file: Path, tmp_path: Path, serve_app: ServeApp
) -> None:
    analyst = bearer(api_keys["analyst"])
    live = tmp_path / "live.duckdb"
    live.write_bytes(db_file.read_bytes())
    settings = Settings.model_validate({"kafka": kafka_isolated.model_dump(), "duckdb": {"path": live}})
    with serve_app(create_app(settings)) as url:
        first = httpx.get(f"{url}/v1/reports/exp-srm", headers=analyst, timeout=60)
        second = httpx.get(f"{url}/v1/reports/exp-srm", headers=analyst, timeout=60)
        assert first.status_code == 200
        assert (first.headers["x-report-cache"], second.headers["x-report-cache"]) == ("miss", "hit")
        assert first.json()["verdict"]["reasons"][0].startswith("sample-ratio mismatch")
        page = httpx.get(f"{url}/v1/reports/exp-1", params={"format": "html"}, headers=analyst, timeout=60)
        assert page.status_code == 200
        assert page.text.startswith("<!doctype html>")
        missing = httpx.get(f"{url}/v1/reports/nope", headers=analyst, timeout=60)
        assert (missing.status_code, missing.json()["detail"]) == (
            404,
            "no experiment 'nope': no served responses carry that deployment id",
        )
        bad = httpx.get(f"{url}/v1/reports/exp-1", params={"metric": "latncy"}, headers=analyst, timeout=60)
        assert bad.status_code == 400
        assert bad.json()["detail"].startswith("unknown metric latncy")
