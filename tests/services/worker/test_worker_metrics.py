"""The worker's Prometheus metrics: the sink's counters, the lag, refresh outcomes (its route: test_worker_api)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from services.worker.metrics import WorkerMetrics
from services.worker.protocol import PartitionLag
from services.worker.sink import SinkStats


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text: (name, sorted labels) -> value."""
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_sink_counters_lag_and_refresh_state_are_read_at_each_scrape() -> None:
    stats = SinkStats(batches=3, interactions=12, feedback=4, audit=2, duplicates=1, dead_lettered=2)
    stats.dead_letter_reasons = {"invalid": 1, "oversized": 1}
    stats.last_commit = "2026-11-30T10:00:00+00:00"
    lags = [
        PartitionLag(topic="interactions", partition=0, committed=7, end=9, lag=2),
        PartitionLag(topic="feedback", partition=1, committed=None, end=None, lag=None),
    ]
    running = [True]
    metrics = WorkerMetrics(lambda: stats, lambda: (lags, None), lambda: running[0])
    got = samples(metrics)
    assert got[("flywheel_sink_events_total", (("table", "interactions"),))] == 12
    assert got[("flywheel_sink_events_total", (("table", "feedback"),))] == 4
    assert got[("flywheel_sink_events_total", (("table", "audit"),))] == 2
    assert got[("flywheel_sink_duplicates_total", ())] == 1
    assert got[("flywheel_sink_dead_letters_total", (("reason", "invalid"),))] == 1
    assert got[("flywheel_sink_dead_letters_total", (("reason", "oversized"),))] == 1
    assert got[("flywheel_sink_batches_total", ())] == 3
    # date -u -d 2026-11-30T10:00:00Z +%s
    assert got[("flywheel_sink_last_commit_timestamp_seconds", ())] == 1796032800.0
    assert got[("flywheel_sink_lag_events", (("partition", "0"), ("topic", "interactions")))] == 2
    assert not any(name == "flywheel_sink_lag_events" and ("topic", "feedback") in labels for name, labels in got)
    assert got[("flywheel_sink_kafka_reachable", ())] == 1
    assert got[("flywheel_refresh_running", ())] == 1
    stats.interactions, running[0] = 20, False
    later = samples(metrics)
    assert later[("flywheel_sink_events_total", (("table", "interactions"),))] == 20
    assert later[("flywheel_refresh_running", ())] == 0


def test_without_kafka_there_is_no_lag_sample_and_reachable_is_zero() -> None:
    metrics = WorkerMetrics(SinkStats, lambda: ([], "NoBrokersAvailable: NoBrokersAvailable"), lambda: False)
    got = samples(metrics)
    assert got[("flywheel_sink_kafka_reachable", ())] == 0
    assert not any(name == "flywheel_sink_lag_events" for name, _ in got)
    assert not any(name == "flywheel_sink_last_commit_timestamp_seconds" for name, _ in got)
    assert got[("flywheel_sink_events_total", (("table", "interactions"),))] == 0
    # the process-wide ones too: the event log's, the audit trail's, and the process's own memory
    for name in ("flywheel_wal_pending_events", "flywheel_audit_failures_total", "process_resident_memory_bytes"):
        assert (name, ()) in got, name


def test_a_refresh_outcome_is_counted_and_only_its_own_steps_are_kept() -> None:
    metrics = WorkerMetrics(SinkStats, lambda: ([], None), lambda: False)
    metrics.refresh_ended({"status": "deployed", "seconds": {"select": 1.5, "train": 600.25, "gate": 30.0}})
    metrics.refresh_ended({"status": "no-op", "seconds": {"select": 0.75}})
    metrics.refresh_ended({"status": "no-op", "seconds": {"select": 0.5}})
    got = samples(metrics)
    assert got[("flywheel_refresh_outcomes_total", (("status", "deployed"),))] == 1
    assert got[("flywheel_refresh_outcomes_total", (("status", "no-op"),))] == 2
    steps = {labels: value for (name, labels), value in got.items() if name == "flywheel_refresh_last_step_seconds"}
    assert steps == {(("step", "select"),): 0.5}
    assert got[("flywheel_refresh_last_finished_timestamp_seconds", ())] > 0
