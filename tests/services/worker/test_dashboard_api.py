"""The dashboard's JSON views on a running worker (real broker, real DuckDB file, a simulated run).

The experiment view serves the report API's numbers; texts are PII-redacted; analysts read, only
admins act, users get nothing; a deployment action with no gateway answering is a 503 that says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import Keys, bearer
from dashboard_run import PII_EMAIL, simulated_run
from fastapi import FastAPI
from pipeline_events import produce, wait_until, worker_settings_in

from feedback.deployments import initial_state, publish_state, set_challenger, set_mode
from feedback.settings import KafkaSettings
from services.cli.ports import free_port
from services.worker.app import create_app

ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
CHAMPION, CHALLENGER = "smollm2-135m-instruct", "smollm2-135m-instruct+" + "ab" * 32


@pytest.fixture
def worker(
    kafka_isolated: KafkaSettings, api_keys: Keys, tmp_path: Path, serve_app: ServeApp
) -> Iterator[tuple[str, str]]:
    """A worker (no gateway behind its actions) that followed a deployment and stored its simulated run."""
    state = set_challenger(
        initial_state(CHAMPION, (5, 10, 25, 50)).model_copy(update={"revision": 1}), CHALLENGER, by="t"
    )
    publish_state(kafka_isolated, set_mode(state, "ab", by="t", step=2))
    events = simulated_run(state.deployment_id, CHAMPION, CHALLENGER)
    settings = worker_settings_in(tmp_path, kafka_isolated, dashboard_gateway_url=f"http://127.0.0.1:{free_port()}")
    with serve_app(create_app(settings)) as url:
        produce(kafka_isolated, events)
        stored = sum(e.type == "interaction" for e in events)
        wait_until(lambda: httpx.get(f"{url}/healthz").json()["sink"]["interactions"] >= stored, what="the run stored")
        yield url, state.deployment_id


def ready(url: str, path: str, key: str, timeout_s: float = 60) -> dict[str, Any]:
    """The view once computed (the first request may answer ``computing``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{url}{path}", headers=bearer(key), timeout=60)
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        if view.get("status", "ready") == "ready" or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def test_views_show_the_report_apis_numbers_redacted(worker: tuple[str, str], api_keys: Keys) -> None:
    url, experiment = worker
    analyst = api_keys["analyst"]
    view = ready(url, f"/v1/dashboard/experiments/{experiment}", analyst)
    report = httpx.get(f"{url}/v1/reports/{experiment}", headers=bearer(analyst), timeout=60).json()
    assert view["status"] == "ready"
    assert [p["phase"] for p in view["report"]["phases"]] == ["shadow", "ab-25"]
    assert {k: v for k, v in view["report"].items() if k != "generated_at"} == {
        k: v for k, v in report.items() if k != "generated_at"
    }
    assert sum(p["champion"] + p["challenger"] for p in view["series"]["traffic"]) == 60 + 600  # shadow, A/B
    overview = ready(url, "/v1/dashboard/overview", analyst)
    assert overview["you"] == {"role": "analyst", "name": "test-analyst", "deploy": False, "refresh": False}
    assert (overview["deployment"]["challenger"], overview["deployment"]["phase"]) == (CHALLENGER, "ab-25")
    wait_until(lambda: ready(url, "/v1/dashboard/overview", analyst)["verdict"]["status"] == "ready", what="verdict")
    assert ready(url, "/v1/dashboard/overview", analyst)["verdict"]["verdict"] == report["verdict"]
    shadow = ready(url, f"/v1/dashboard/experiments/{experiment}/shadow?q=item&limit=5", analyst)
    assert shadow["shadow"]["pairs"] == 60
    assert len(shadow["disagreements"]) == 5
    assert all("item" in row["challenger"] and PII_EMAIL not in row["challenger"] for row in shadow["disagreements"])
    assert "[EMAIL]" in shadow["disagreements"][0]["challenger"]


def test_feedback_is_filtered_and_redacted(worker: tuple[str, str], api_keys: Keys) -> None:
    url, _ = worker
    get = lambda query: httpx.get(f"{url}/v1/dashboard/feedback?{query}", headers=bearer(api_keys["analyst"])).json()  # noqa: E731
    corrections = get("kind=correction&limit=500")
    assert corrections
    assert all(row["correction"] for row in corrections)
    assert {row["thumb"] for row in get("kind=down&arm=challenger&limit=500")} == {"down"}
    mails = get("q=reach me&limit=500")
    assert mails
    assert all(row["comment"] == "reach me at [EMAIL]" for row in mails)


def test_only_admins_act_and_users_see_nothing(worker: tuple[str, str], api_keys: Keys) -> None:
    url, experiment = worker
    for role, path in (("user", "/v1/dashboard/overview"), ("user", f"/v1/dashboard/experiments/{experiment}")):
        assert httpx.get(f"{url}{path}", headers=bearer(api_keys[role])).status_code == 403
    refused = httpx.post(f"{url}/v1/dashboard/deployments/promote", headers=bearer(api_keys["analyst"]))
    assert refused.json() == {"detail": "the role 'analyst' may not deploy-ramp; admin may"}
    unreachable = httpx.post(f"{url}/v1/dashboard/deployments/rollback", headers=bearer(api_keys["admin"]), timeout=60)
    assert unreachable.status_code == 503
    assert unreachable.json()["detail"].startswith("the gateway at http://127.0.0.1:")
    no_step = httpx.post(f"{url}/v1/dashboard/deployments/mode", headers=bearer(api_keys["admin"]))
    assert no_step.json() == {"detail": 'changing the ramp step needs a body: {"mode": "ab", "step": N}'}
    unknown = lambda: httpx.get(f"{url}/v1/dashboard/experiments/nope", headers=bearer(api_keys["analyst"]))  # noqa: E731
    wait_until(lambda: unknown().status_code == 404, what="a 404 once the unknown experiment was looked up")
    assert "nope" in unknown().json()["detail"]


def test_the_page_and_its_assets_are_public_and_fixed(worker: tuple[str, str]) -> None:
    url, _ = worker
    page = httpx.get(f"{url}/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="/dashboard/static/app.js"' in page.text
    assert httpx.get(f"{url}/dashboard/static/charts.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{url}/dashboard/static/..%2Fapp.py").status_code == 404
