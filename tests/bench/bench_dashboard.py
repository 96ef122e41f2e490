"""The dashboard's page data over 10 million responses: served from its cache against computed on request.

Data: the report benchmark's 10,000,000 served responses of 400,000 users over 30 days and about
3,000,000 feedback rows (``bench_report.GENERATE``), inserted into a worker's DuckDB file with the
real schema (``DuckDBStore``: migrations, keys) and rolled up as the worker's job does.

Competitors, each timed in turn within each of 5 repeats, medians printed with their ratio:
- cached: what an experiment page waits for: ``GET /v1/dashboard/experiments/bench`` (report, traffic
  split over time) through the real route and JSON encoding, served from the view cache;
- on request: the same report computed when asked (``report_json``, as an uncached report request);
- live, experiments, feedback: the overview's live rates and experiment list, and the feedback page's
  latest 50 rows, each as a query of its own (the first two are cached by the overview as well).
The target is a page under 1 s with 10 million responses.

    PYTHONPATH=tests .venv/bin/python tests/bench/bench_dashboard.py
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
from bench_report import GENERATE  # this folder is on sys.path when a benchmark runs
from fastapi import FastAPI
from fastapi.testclient import TestClient
from interleave import interleaved

from feedback.rollup import refresh_rollup
from feedback.settings import Settings
from feedback.store import DuckDBStore
from services.worker.dashboard.records import feedback_view
from services.worker.dashboard.routes import router
from services.worker.dashboard.series import experiments, live_rates
from services.worker.dashboard.views import DashboardViews
from services.worker.reports import report_json

INTO_SCHEMA = """
ATTACH '{source}' AS generated (READ_ONLY);
INSERT INTO interactions BY NAME
SELECT interaction_id, 'e' || interaction_id AS event_id, 1 AS schema_version, ts,
       'r' || interaction_id AS request_id, unit_id, arm, role, arm AS model_version, deployment_id, phase,
       '[]' AS messages, completion, 10 AS prompt_tokens, completion_tokens, latency_ms, confidence, error,
       0 AS kafka_partition, 0 AS kafka_offset, ingested_at
FROM generated.interactions;
INSERT INTO feedback BY NAME
SELECT 'f' || interaction_id AS feedback_id, 'g' || interaction_id AS event_id, 1 AS schema_version,
       ingested_at AS ts, interaction_id, thumb, rating, correction, 0 AS kafka_partition, 0 AS kafka_offset,
       ingested_at
FROM generated.feedback;
DETACH generated;
"""


def build(tmp: Path, threads: int) -> DuckDBStore:
    """The 10M-response worker file: generated in SQL, then inserted with the worker's schema and rolled up."""
    source = tmp / "generated.duckdb"
    start = time.perf_counter()
    with duckdb.connect(str(source), config={"threads": threads}) as con:
        con.execute(GENERATE)
    store = DuckDBStore(tmp / "worker.duckdb", memory_limit="8GB", threads=threads)
    store.execute(INTO_SCHEMA.format(source=source))
    refresh_rollup(store)
    rows = store.query("SELECT (SELECT count(*) FROM interactions) AS i, (SELECT count(*) FROM feedback) AS f")[0]
    print(f"built {rows['i']:,} responses and {rows['f']:,} feedback rows in {time.perf_counter() - start:.0f} s")
    return store


def main() -> None:
    threads = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {threads} cpus, duckdb {duckdb.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        store = build(Path(tmp), threads)
        settings = Settings(security={"auth": "off"})
        app = FastAPI()
        app.include_router(router)
        app.state.settings, app.state.store = settings, store
        app.state.dashboard = views = DashboardViews(store, settings)
        client = TestClient(app)
        start = time.perf_counter()
        while client.get("/v1/dashboard/experiments/bench").json()["status"] != "ready":
            time.sleep(0.05)
        print(f"first computation in the background: {time.perf_counter() - start:.1f} s\n")

        def cached() -> None:
            response = client.get("/v1/dashboard/experiments/bench")
            assert response.json()["status"] == "ready"

        times, _ = interleaved(
            {
                "cached: experiment page data (HTTP + JSON)": cached,
                "on request: the report computed": lambda: report_json(store, settings.experiment, "bench"),
                "live rates (overview)": lambda: live_rates(store),
                "experiment list (overview)": lambda: experiments(store),
                "feedback page: latest 50": lambda: feedback_view(store, "any", None, None, 50),
            },
            warm_up=False,  # the cache's first computation above warmed the store
        )
        base = statistics.median(times["on request: the report computed"])
        print(f"{'competitor':<44} {'best s':>8} {'median s':>9} {'vs on request':>14}")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:<44} {min(values):>8.4f} {median:>9.4f} {median / base:>14.4f}")
        page = statistics.median(times["cached: experiment page data (HTTP + JSON)"])
        print(f"\nexperiment page data from the cache: median {page * 1000:.1f} ms (target < 1 s)")
        views.close()
        store.close()


if __name__ == "__main__":
    main()
