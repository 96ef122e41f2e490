"""The dashboard end to end in a real headless Chromium (the system's, driven by Playwright).

A gateway serving the default model with a real LoRA challenger from the registry, and a worker
whose dashboard acts through that gateway, on the session's broker. A simulated run of the
experiment goes through Kafka into the worker's DuckDB file. Then, in the browser: an analyst logs
in with a key and sees every page but no action (and the API refuses the action); an admin opens
each page, whose numbers equal the report API's, changes the ramp step, promotes, and rolls back a
new challenger, each confirmed in a dialog; the gateway's deployment follows, and the audit trail
records each change as the admin's, as for the CLI. The page also fits a phone-width screen.
Screenshots of every page are written under the test's temporary directory and their folder printed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_keys import Keys, bearer, label
from dashboard_run import PII_EMAIL, record_refresh, simulated_run
from fastapi import FastAPI
from lora_adapters import random_lora
from pipeline_events import produce, wait_until, worker_settings_in
from playwright.sync_api import sync_playwright

from feedback.model.runtime import ModelRuntime
from feedback.registry import AdapterRegistry
from feedback.settings import KafkaSettings, Settings
from services.gateway.app import create_app as create_gateway
from services.gateway.backend import TransformersBackend
from services.worker.app import create_app as create_worker

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# headless, and nothing that would reach outside this machine (its connections would be refused)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
BASE = "smollm2-135m-instruct"
ServeApp = Callable[[FastAPI], AbstractContextManager[str]]
pytestmark = [pytest.mark.kafka, pytest.mark.model]
# true once some elements match the selector and every one of them contains the text (the table redraws as it polls)
ALL_ROWS = """([selector, wanted]) => {
    const found = [...document.querySelectorAll(selector)];
    return found.length > 0 && found.every((el) => el.textContent.includes(wanted));
}"""


@dataclass(frozen=True)
class Loop:
    """The running parts: gateway and worker URLs, the experiment, the challenger, the keys."""

    gateway: str
    worker: str
    experiment: str
    challenger: str
    keys: Keys

    def admin(self, path: str = "", body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The gateway's deployment (GET), or a change to it (POST), as the CLI makes it."""
        method = "POST" if path else "GET"
        url = f"{self.gateway}/v1/admin/deployments{path}"
        response = httpx.request(method, url, json=body, headers=bearer(self.keys["admin"]), timeout=120)
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view


@pytest.fixture
def loop(
    tmp_path: Path, kafka_isolated: KafkaSettings, api_keys: Keys, model_dir: Path, serve_app: ServeApp
) -> Iterator[Loop]:
    registry = tmp_path / "registry"
    adapter = random_lora(model_dir, tmp_path / "lora", 1, rank=4, alpha=32, modules=("q_proj", "v_proj"))
    version = AdapterRegistry(registry).register(adapter, dataset_manifest={"rows": 381}, lineage={"parent": None})
    record_refresh(AdapterRegistry(registry), "2026-01-02", version)
    gateway_settings = Settings.model_validate(
        {"kafka": kafka_isolated.model_dump(), "gateway": {"wal": {"dir": tmp_path / "wal"}, "drain_timeout_s": 10},
         "model": {"registry_dir": registry}}
    )  # fmt: skip
    backend = TransformersBackend(ModelRuntime.load(model_dir), gateway_settings.gateway, AdapterRegistry(registry))
    with ExitStack() as stack:
        gateway = stack.enter_context(serve_app(create_gateway(gateway_settings, backend=backend)))
        worker_settings = worker_settings_in(tmp_path, kafka_isolated, dashboard_gateway_url=gateway)
        assert worker_settings.model.registry_dir == registry  # the gateway and the worker share the registry
        worker = stack.enter_context(serve_app(create_worker(worker_settings)))
        loop = Loop(gateway, worker, "", f"{BASE}+{version}", api_keys)
        experiment = loop.admin("/challenger", {"model_version": loop.challenger})["deployment_id"]
        loop.admin("/mode", {"mode": "ab", "step": 2})
        events = simulated_run(experiment, BASE, loop.challenger)
        produce(kafka_isolated, events)
        stored = sum(e.type == "interaction" for e in events)
        wait_until(lambda: httpx.get(f"{worker}/healthz").json()["sink"]["interactions"] >= stored, what="the run")
        yield Loop(gateway, worker, experiment, loop.challenger, api_keys)


@pytest.fixture
def browser() -> Iterator[Any]:
    """The system's Chromium, headless, with a fresh profile (Playwright makes one per launch)."""
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def log_in(page: Any, loop: Loop, role: str) -> None:
    page.goto(f"{loop.worker}/dashboard#/overview")
    page.fill("#key", loop.keys[role])
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#overview [data-k=champion]")


def text(page: Any, selector: str) -> str:
    value: str = page.inner_text(selector).strip()
    return value


def pct(x: float | None, digits: int = 2) -> str:
    """As the page formats a share: ``12.34%``."""
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


def confirm(page: Any, button: str) -> None:
    page.click(button)
    page.wait_for_selector("dialog#confirm[open]")
    page.click("#confirm-ok")


def test_the_dashboard_in_a_browser(
    loop: Loop, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shots = tmp_path / "dashboard-screenshots"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)

    # an analyst sees the loop, read-only; the API refuses the analyst's action too
    log_in(page, loop, "analyst")
    assert "read-only" in text(page, "#role")
    assert page.locator("#promote").count() == 0
    status = page.evaluate(
        "async () => (await api('/v1/dashboard/deployments/promote', {method: 'POST', body: {}})).status"
    )
    assert status == 403
    page.click("text=Log out")

    # a user's key gets nothing
    page.fill("#key", loop.keys["user"])
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:has-text('may not use the dashboard')")

    log_in(page, loop, "admin")
    report = httpx.get(f"{loop.worker}/v1/reports/{loop.experiment}", headers=bearer(loop.keys["admin"]), timeout=120)
    check_overview(page, loop, report.json(), shots)
    check_experiment(page, loop, report.json(), shots)
    check_shadow(page, loop, report.json(), shots)
    check_other_pages(page, loop, shots)
    act(page, loop, shots)
    check_phone_width(browser, loop, shots)
    with capsys.disabled():
        print(f"\ndashboard screenshots: {shots}")


def check_overview(page: Any, loop: Loop, report: dict[str, Any], shots: Path) -> None:
    assert text(page, "#overview [data-k=challenger]") == f"{BASE}+{loop.challenger.split('+')[1][:12]}…"
    assert text(page, "#overview [data-k=phase]") == "ab-25"
    page.wait_for_selector("#overview [data-k=verdict]")
    assert text(page, "#overview [data-k=verdict]").endswith(report["verdict"]["action"])
    assert text(page, "#overview [data-k=last-refresh]") == "2026-01-02: deployed"
    page.screenshot(path=shots / "overview.png", full_page=True)
    page.reload()  # a fresh load keeps the key for this tab; keyboard users land on the skip link first
    page.wait_for_selector("#overview [data-k=champion]")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")  # and skip to the page's content
    assert page.evaluate("document.activeElement.id") == "main"


def check_experiment(page: Any, loop: Loop, report: dict[str, Any], shots: Path) -> None:
    page.goto(f"{loop.worker}/dashboard#/experiment/{loop.experiment}")
    page.wait_for_selector("#experiment tr[data-metric]")
    phase = report["phases"][-1]
    assert text(page, "[data-k=srm-p]") == f"{phase['srm']['p_value']:.4f}"
    assert phase["metrics"]
    for metric in phase["metrics"]:
        row = f"#experiment tr[data-metric={metric['name']}]"
        lo, hi = metric["relative"]["ci"]
        slo, shi = metric["sequential_relative"]["ci"]
        assert text(page, f"{row} [data-k=lift]").startswith(pct(metric["relative"]["estimate"]))
        assert text(page, f"{row} [data-k=ci]") == f"[{pct(lo)}, {pct(hi)}]"
        assert text(page, f"{row} [data-k=seq-ci]") == f"[{pct(slo)}, {pct(shi)}]"
        assert text(page, f"{row} [data-k=chance]") == pct(metric["bayesian"]["chance_to_win"], 1)
        assert text(page, f"{row} [data-k=challenger]") == f"{metric['challenger']['value']:.4f}"
    page.screenshot(path=shots / "experiment.png", full_page=True)


def check_shadow(page: Any, loop: Loop, report: dict[str, Any], shots: Path) -> None:
    page.goto(f"{loop.worker}/dashboard#/shadow/{loop.experiment}")
    page.wait_for_selector("#shadow [data-k=pairs]")
    assert text(page, "[data-k=pairs]") == str(report["shadow"]["pairs"])
    assert text(page, "[data-k=exact]") == pct(report["shadow"]["exact_match"], 1)
    page.fill("#search", "item 3")
    page.wait_for_selector("#disagreements caption:has-text('matching the search')")
    page.wait_for_function(ALL_ROWS, arg=["#disagreements tbody tr", "item 3"])
    assert PII_EMAIL not in page.content()
    assert "[EMAIL]" in text(page, "#disagreements")
    page.screenshot(path=shots / "shadow.png", full_page=True)


def check_other_pages(page: Any, loop: Loop, shots: Path) -> None:
    adapter = loop.challenger.split("+")[1]
    page.goto(f"{loop.worker}/dashboard#/models")
    page.wait_for_selector(f"#models tr[data-version='{adapter}']")
    assert "challenger" in text(page, f"tr[data-version='{adapter}'] [data-k=state]")
    assert page.locator("#models svg[role=img]").count() == 1
    page.screenshot(path=shots / "models.png", full_page=True)
    page.goto(f"{loop.worker}/dashboard#/refreshes")
    page.wait_for_selector("#refreshes h3:has-text('2026-01-02: deployed')")
    assert "near_duplicates: 31" in text(page, "#refreshes")
    curve = page.locator("#refreshes svg[aria-label^='Training loss of 2026-01-02, step by step']")
    assert curve.get_attribute("aria-label") == "Training loss of 2026-01-02, step by step: 2.310 to 1.120"
    assert curve.locator("polyline").get_attribute("points").count(",") == 5  # one point per step
    page.screenshot(path=shots / "refreshes.png", full_page=True)
    page.goto(f"{loop.worker}/dashboard#/feedback")
    page.wait_for_selector("#feedback tbody tr")
    page.select_option("#kind", "correction")
    page.wait_for_function(ALL_ROWS, arg=["#feedback tbody tr td:nth-child(5)", "should mention item"])
    page.screenshot(path=shots / "feedback.png", full_page=True)


def act(page: Any, loop: Loop, shots: Path) -> None:
    page.goto(f"{loop.worker}/dashboard#/overview")
    page.wait_for_selector("#overview [data-k=phase]")
    page.select_option("#ramp-step", "3")
    confirm(page, "#set-step")
    page.wait_for_selector("#overview [data-k=phase]:has-text('ab-50')")
    page.click("#promote")  # cancelling changes nothing
    page.click("#confirm-cancel")
    page.wait_for_selector("#action-status:has-text('cancelled')")
    confirm(page, "#promote")
    page.wait_for_selector("#overview [data-k=challenger]:has-text('none')")
    assert loop.admin()["champion"] == loop.challenger
    loop.admin("/challenger", {"model_version": BASE})  # the former champion comes back as a challenger
    page.wait_for_selector(f"#overview [data-k=challenger]:has-text('{BASE}')")
    page.screenshot(path=shots / "overview-with-new-challenger.png", full_page=True)
    confirm(page, "#rollback")
    page.wait_for_selector("#overview [data-k=challenger]:has-text('none')")
    after = loop.admin()
    assert (after["champion"], after["challenger"]) == (loop.challenger, None)
    audit_url = f"{loop.worker}/v1/audit?action=deployment.*&outcome=allowed"
    audited = lambda: httpx.get(audit_url, headers=bearer(loop.keys["admin"]), timeout=30).json()  # noqa: E731
    wait_until(lambda: {"deployment.promote", "deployment.rollback"} <= {e["action"] for e in audited()}, what="audit")
    by = {e["action"]: e["actor"] for e in audited() if e["action"] in ("deployment.promote", "deployment.rollback")}
    assert by == {"deployment.promote": label(loop.keys, "admin"), "deployment.rollback": label(loop.keys, "admin")}


def check_phone_width(browser: Any, loop: Loop, shots: Path) -> None:
    phone = browser.new_context(viewport={"width": 390, "height": 844})
    page = phone.new_page()
    page.set_default_timeout(60_000)
    log_in(page, loop, "analyst")
    for name in ("overview", f"experiment/{loop.experiment}"):
        page.goto(f"{loop.worker}/dashboard#/{name}")
        page.wait_for_selector("#page .card")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # tables scroll inside their cards
    page.screenshot(path=shots / "phone-experiment.png", full_page=True)
    phone.close()
