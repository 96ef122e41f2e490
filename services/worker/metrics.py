"""Prometheus metrics of one worker, in a registry of its own: the sink's progress and lag, and the refresh.

The sink's counters and the consumer lag are read when Prometheus scrapes (a collector), so the
sink's write path pays nothing for them. The lag is what ``flywheel sink status`` shows: Kafka's end
offset of each partition (one client kept between scrapes, outside the sink's group) minus the
offset DuckDB holds; while Kafka does not answer there is no lag sample and
``flywheel_sink_kafka_reachable`` is 0. Refresh outcomes are counted as each refresh ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import feedback.audit  # defines the audit trail's process-wide counter, which every scrape includes
import feedback.producer  # noqa: F401  defines the event log's process-wide gauges, likewise
from feedback.metrics import exposition
from services.worker.protocol import PartitionLag
from services.worker.sink import SinkStats

Lags = Callable[[], tuple[list[PartitionLag], str | None]]  # partitions, and why the end offsets are unknown
TABLES = ("interactions", "feedback", "audit")  # the tables the sink writes, as SinkStats counts them


class WorkerMetrics:
    """The sink's events, duplicates, dead letters, batches, last commit and lag; refresh outcomes and steps."""

    def __init__(self, stats: Callable[[], SinkStats], lags: Lags, refreshing: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_SinkCollector(stats, lags, refreshing))
        self.refresh_outcomes = Counter(
            "flywheel_refresh_outcomes",
            "Refreshes ended, by status (deployed, rejected, no-op ...)",
            ["status"],
            registry=r,
        )
        self.refresh_step_seconds = Gauge(
            "flywheel_refresh_last_step_seconds", "Seconds each step of the latest refresh took", ["step"], registry=r
        )
        self.refresh_finished = Gauge(
            "flywheel_refresh_last_finished_timestamp_seconds", "When the latest refresh ended, Unix time", registry=r
        )

    def refresh_ended(self, outcome: Mapping[str, Any]) -> None:
        """Count a refresh's outcome and keep its steps' seconds (the steps it did not reach are dropped)."""
        self.refresh_outcomes.labels(status=str(outcome.get("status"))).inc()
        self.refresh_step_seconds.clear()
        for step, seconds in (outcome.get("seconds") or {}).items():
            self.refresh_step_seconds.labels(step=step).set(seconds)
        self.refresh_finished.set_to_current_time()

    def render(self) -> bytes:
        """The text exposition format."""
        return exposition(self.registry)


class _SinkCollector(Collector):
    """Reads the sink's counters and the lag at each scrape; every family is always named, samples when known."""

    def __init__(self, stats: Callable[[], SinkStats], lags: Lags, refreshing: Callable[[], bool]) -> None:
        self._stats, self._lags, self._refreshing = stats, lags, refreshing

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        events = CounterMetricFamily(
            "flywheel_sink_events", "Events written to DuckDB since the worker started", labels=["table"]
        )
        for table in TABLES:
            events.add_metric([table], getattr(stats, table))
        yield events
        yield CounterMetricFamily(
            "flywheel_sink_duplicates", "Events already stored (redeliveries), skipped", value=stats.duplicates
        )
        dead = CounterMetricFamily(
            "flywheel_sink_dead_letters", "Records refused and sent to the dead-letter topic", labels=["reason"]
        )
        for reason, count in sorted(stats.dead_letter_reasons.items()):
            dead.add_metric([reason], count)
        yield dead
        yield CounterMetricFamily("flywheel_sink_batches", "Batches committed to DuckDB", value=stats.batches)
        last = GaugeMetricFamily("flywheel_sink_last_commit_timestamp_seconds", "When the latest batch committed")
        if stats.last_commit is not None:
            last.add_metric([], datetime.fromisoformat(stats.last_commit).timestamp())
        yield last
        yield from self._lag()
        yield GaugeMetricFamily(
            "flywheel_refresh_running", "1 while a refresh runs here", value=int(self._refreshing())
        )

    def _lag(self) -> Iterator[Metric]:
        partitions, error = self._lags()
        lag = GaugeMetricFamily(
            "flywheel_sink_lag_events", "Records in Kafka not yet in DuckDB", labels=["topic", "partition"]
        )
        for p in partitions:
            if p.lag is not None:
                lag.add_metric([p.topic, str(p.partition)], p.lag)
        yield lag
        yield GaugeMetricFamily(
            "flywheel_sink_kafka_reachable", "1 when Kafka answered this scrape's end offsets", value=int(error is None)
        )
