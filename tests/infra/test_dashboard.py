"""The Grafana dashboard (infra/grafana/dashboards/flywheel.json): its structure, and that every metric
its queries name is one the gateway or the worker exports.

What each service exports is read from the registries their ``GET /metrics`` routes render
(``GatewayMetrics`` in the gateway, ``WorkerMetrics`` in the worker, and the process-wide registry
both add, :func:`feedback.metrics.exposition`; test_worker_api scrapes the worker's route),
expanded the way the text format names samples: a counter ``x`` as ``x_total``, a histogram as
``x_bucket``, ``x_sum`` and ``x_count``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from services.gateway.metrics import GatewayMetrics
from services.worker.metrics import WorkerMetrics
from services.worker.sink import SinkStats

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "dashboards" / "flywheel.json"
METRIC = re.compile(r"\bflywheel_[a-z0-9_]+\b")  # every metric of the project is named flywheel_...
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
PANEL_TYPES = {"row", "timeseries", "stat", "bargauge"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(board: dict[str, Any]) -> list[str]:
    """The PromQL expression of every target of every panel."""
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def sample_names(registry: CollectorRegistry) -> set[str]:
    """The names the text exposition of ``registry`` gives its samples."""
    return {f.name + suffix for f in registry.collect() for suffix in SAMPLE_SUFFIXES[f.type]}


def exported() -> set[str]:
    worker = WorkerMetrics(SinkStats, lambda: ([], None), lambda: False)
    return sample_names(GatewayMetrics().registry) | sample_names(worker.registry) | sample_names(REGISTRY)


def missing_metrics(board: dict[str, Any], names: set[str]) -> set[str]:
    """Metrics the dashboard's queries name that are not among ``names``."""
    return {name for expr in queries(board) for name in METRIC.findall(expr)} - names


def test_every_metric_the_dashboard_names_is_exported() -> None:
    assert missing_metrics(dashboard(), exported()) == set()


def test_a_metric_no_service_exports_is_reported() -> None:
    board = dashboard()
    made_up = {"id": 99, "type": "stat", "targets": [{"refId": "A", "expr": "sum(rate(flywheel_made_up_total[5m]))"}]}
    board["panels"].append(made_up)
    assert missing_metrics(board, exported()) == {"flywheel_made_up_total"}
    assert "flywheel_sink_lag_events" in exported()  # named although this test asks no Kafka for a lag


def test_the_dashboard_shows_every_area_of_the_service() -> None:
    named = {name for expr in queries(dashboard()) for name in METRIC.findall(expr)}
    for area in (
        "flywheel_responses_total",  # request rate per arm
        "flywheel_response_latency_seconds_bucket",  # latency per arm
        "flywheel_shadow_total",
        "flywheel_key_limited_total",
        "flywheel_challenger_fallbacks_total",
        "flywheel_wal_fill_ratio",  # the gateways' write-ahead logs (a broker outage fills them)
        "flywheel_wal_pending_events",
        "flywheel_sink_events_total",  # ingest
        "flywheel_sink_lag_events",
        "flywheel_refresh_outcomes_total",
    ):
        assert area in named, area


def test_panels_are_laid_out_on_the_grid_and_query_the_chosen_datasource() -> None:
    board = dashboard()
    assert (board["uid"], board["title"]) == ("flywheel", "flywheel")
    assert isinstance(board["schemaVersion"], int)
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] < grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert sorted(refs) == sorted(set(refs)) != [], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert METRIC.search(target["expr"]), target["expr"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
