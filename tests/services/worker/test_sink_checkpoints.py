"""A sink shard's offsets on Kafka, against the real broker and real DuckDB files.

A shard commits to Kafka only what the lake holds, and all it stored when it stops; the only
sink (no shard) commits nothing, as before shards existed; a shard resumes at the group's commit
unless its own DuckDB file is ahead of it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kafka import KafkaAdminClient
from pipeline_events import interaction, produce, run_in_thread, wait_until, worker_settings_in

from feedback.events import InteractionEvent
from feedback.settings import KafkaSettings
from feedback.store import DuckDBStore
from services.worker.shard import Ingest, open_ingest


def group_commit(kafka: KafkaSettings) -> dict[tuple[str, int], int]:
    """The sink group's committed offsets on Kafka."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        found = admin.list_group_offsets({kafka.consumer_group: None})[kafka.consumer_group]
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}


@contextmanager
def running(kafka: KafkaSettings, tmp_path: Path, db: str, shard: str = "") -> Iterator[tuple[Ingest, DuckDBStore]]:
    """A sink (shard ``shard``, or the only one) on ``<tmp_path>/<db>``, stopped and closed at the end."""
    settings = worker_settings_in(tmp_path, kafka, sink_shard=shard, lake_export_interval_s=3600)
    store = DuckDBStore(tmp_path / db)
    ingest = open_ingest(settings, store)
    thread: threading.Thread = run_in_thread(ingest.sink.run, f"sink-{shard}")
    try:
        yield ingest, store
    finally:
        ingest.sink.stop()
        thread.join(timeout=60)
        store.close()


def chats(first: int, count: int) -> list[InteractionEvent]:
    return [interaction(n) for n in range(first, first + count)]


def stored_ids(store: DuckDBStore) -> set[str]:
    return {r["event_id"] for r in store.query("SELECT event_id FROM interactions")}


def test_a_shard_commits_what_the_lake_holds_and_all_it_stored_when_it_stops(
    kafka_isolated: KafkaSettings, tmp_path: Path
) -> None:
    with running(kafka_isolated, tmp_path, "a.duckdb", shard="a") as (shard, store):
        produce(kafka_isolated, chats(0, 40))
        wait_until(lambda: shard.sink.stats.interactions == 40, what="40 rows")
        assert group_commit(kafka_isolated) == {}  # stored, not in the lake yet: nothing committed
        exported = shard.lake.export()
        shard.exported(exported)
        wait_until(lambda: group_commit(kafka_isolated) == exported.offsets, what="the export's offsets committed")
        produce(kafka_isolated, chats(40, 10))
        wait_until(lambda: shard.sink.stats.interactions == 50, what="50 rows")
        stored = store.committed_offsets()
    assert group_commit(kafka_isolated) == stored  # the stop exported everything and committed it
    assert sum(stored.values()) == 50
    lake = tmp_path / "lake" / "raw" / "interactions"
    assert sorted(p.name.split("-")[1] for p in lake.glob("day=*/*.parquet")) == ["a", "a"]


def test_the_only_sink_commits_nothing_to_kafka(kafka_isolated: KafkaSettings, tmp_path: Path) -> None:
    with running(kafka_isolated, tmp_path, "w.duckdb") as (only, _):
        produce(kafka_isolated, chats(0, 10))
        wait_until(lambda: only.sink.stats.interactions == 10, what="10 rows")
        only.exported(only.lake.export())
    assert group_commit(kafka_isolated) == {}


def test_a_shard_resumes_at_the_groups_commit_unless_its_own_file_is_ahead(
    kafka_isolated: KafkaSettings, tmp_path: Path
) -> None:
    with running(kafka_isolated, tmp_path, "x.duckdb") as (only, _):  # offsets in DuckDB alone
        produce(kafka_isolated, chats(0, 20))
        wait_until(lambda: only.sink.stats.interactions == 20, what="20 rows")
    with running(kafka_isolated, tmp_path, "x.duckdb", shard="a") as (ahead, _):  # the group has no commit: DuckDB's
        produce(kafka_isolated, chats(20, 5))
        wait_until(lambda: ahead.sink.stats.interactions == 5, what="5 new rows")
        assert ahead.sink.stats.duplicates == 0
    new = chats(25, 5)
    with running(kafka_isolated, tmp_path, "y.duckdb", shard="b") as (fresh, fresh_store):  # an empty file
        produce(kafka_isolated, new)
        wait_until(lambda: fresh.sink.stats.interactions == 5, what="5 new rows")
        assert stored_ids(fresh_store) == {e.event_id for e in new}  # it resumed at the group's commit
