"""Two sink shards (``flywheel sink run`` processes) in one consumer group, on the real broker.

The data topics have two partitions each, so the shards hold three partitions apiece. Each shard
writes its own DuckDB file and exports into one lake; the analyst views over the lake must show
every event produced exactly once, whatever the shards went through:

1. SIGTERM: a shard that has not exported yet (its export interval is an hour) stores its share
   and is stopped; it exports what it stored and commits that to Kafka before it leaves, so the
   other takes its partitions exactly where it stopped: not one row is in the lake twice.
2. SIGKILL: the same shard, started again, is killed after storing its share of new events; the
   other takes its partitions at the group's last commit and writes that share again. When the
   killed shard comes back it exports its copies too: the lake then holds each of them twice,
   and the views still count every event once.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from pipeline_events import feedback, interaction, wait_until
from sink_processes import ShardProcess, group_members, member, sink_shard

from feedback.events import AnyEvent
from feedback.sandbox import sandbox_connection
from feedback.settings import KafkaSettings
from services.worker.status import EndOffsets

FAST = {"lake_export_interval_s": 0.5, "poll_timeout_ms": 100, "sink_session_timeout_ms": 6000}
NEVER_EXPORTS = FAST | {"lake_export_interval_s": 3600}
TIMEOUT_S = 90.0


def produce(kafka: KafkaSettings, first: int, count: int) -> dict[str, tuple[str, int]]:
    """``count`` interactions from number ``first``, with feedback on every fourth: event id -> (topic, partition)."""
    events: list[AnyEvent] = []
    for n in range(first, first + count):
        events += [interaction(n)] + ([feedback(n)] if n % 4 == 0 else [])
    topics = {"interaction": kafka.topics.interactions, "feedback": kafka.topics.feedback}
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    try:
        futures = {e.event_id: producer.send(topics[e.type], key=e.kafka_key(), value=e.encode()) for e in events}
        placed = {event_id: future.get(timeout=30) for event_id, future in futures.items()}
    finally:
        producer.close()
    return {event_id: (meta.topic, meta.partition) for event_id, meta in placed.items()}


TABLES = ("interactions", "feedback")


def exported(lake: Path) -> list[str]:
    """The tables of ``TABLES`` that have files in the redacted lake."""
    return [t for t in TABLES if any((lake / "redacted" / t).glob("day=*/*.parquet"))]


def lake_ids(lake: Path) -> tuple[list[str], int]:
    """Event ids in the analyst views (deduplicated), and how many rows the lake's files hold in all."""
    tables = exported(lake)
    if not tables:
        return [], 0
    view = sandbox_connection(lake, admin=True, memory_limit="256MB")
    ids = [r[0] for t in tables for r in view.sql(f"SELECT event_id FROM {t}").fetchall()]  # noqa: S608
    view.close()
    return ids, len(lake_file_ids(lake))


def lake_file_ids(lake: Path) -> list[str]:
    """The event id of every row in the lake's redacted interactions and feedback files, duplicates included."""
    files = [f"{lake}/redacted/{t}/day=*/*.parquet" for t in exported(lake)]
    if not files:
        return []
    with duckdb.connect() as con:
        rows = con.execute("SELECT event_id FROM read_parquet(?, union_by_name = true)", [files]).fetchall()
    return [r[0] for r in rows]


def partitions_of(kafka: KafkaSettings, *shards: ShardProcess) -> dict[str, set[tuple[str, int]]]:
    """The partitions each of ``shards`` holds, once they alone hold every data partition, some each."""
    topics = (kafka.topics.interactions, kafka.topics.feedback, kafka.topics.audit)
    every = {(topic, p) for topic in topics for p in range(kafka.topics.partitions)}
    names = {member(s.name) for s in shards}

    def split() -> bool:
        members = group_members(kafka)
        held = [members.get(n, set()) for n in names]
        return set(members) == names and all(held) and set().union(*held) == every

    wait_until(split, TIMEOUT_S, f"{sorted(names)} to hold every partition")
    return {s.name: group_members(kafka)[member(s.name)] for s in shards}


def all_committed(kafka: KafkaSettings, ends: EndOffsets) -> bool:
    """Whether the group's commit on Kafka has reached the end of every data partition."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        committed = admin.list_group_offsets({kafka.consumer_group: None})[kafka.consumer_group]
    finally:
        admin.close()
    done = {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()}
    topics = [kafka.topics.interactions, kafka.topics.feedback, kafka.topics.audit]
    return all(done.get(key, 0) >= end for key, end in ends(topics).items())


def wait_for_lake(lake: Path, distinct: int, rows: int | None = None) -> None:
    """Wait until the views count ``distinct`` events (and the files ``rows`` rows, when given)."""

    def there() -> bool:
        ids, stored = lake_ids(lake)
        return len(set(ids)) == distinct and (rows is None or stored == rows)

    wait_until(there, TIMEOUT_S, f"{distinct} events ({rows} rows) in the lake")


@pytest.fixture
def ends(kafka_isolated: KafkaSettings) -> Iterator[EndOffsets]:
    offsets = EndOffsets(kafka_isolated)
    yield offsets
    offsets.close()


def test_shards_split_partitions_hand_them_over_and_the_views_count_each_event_once(
    kafka_isolated: KafkaSettings, ends: EndOffsets, tmp_path: Path
) -> None:
    kafka, lake, produced = kafka_isolated, tmp_path / "lake", {}
    with sink_shard(kafka, tmp_path, "b", lake, **FAST) as b:
        with sink_shard(kafka, tmp_path, "a", lake, **NEVER_EXPORTS) as a:  # 1. a graceful stop
            held = partitions_of(kafka, a, b)
            assert len(held["a"]) == len(held["b"]) == 3  # one partition of each data topic apiece
            produced |= produce_stored(kafka, 0, 120, a, held["a"])[0]
            assert a.stop(signal.SIGTERM) == 0  # its share reaches the lake and its offsets Kafka only now
        assert partitions_of(kafka, b)["b"] == held["a"] | held["b"]
        produced |= produce(kafka, 120, 60)
        wait_for_lake(lake, len(produced), rows=len(produced))  # b resumed exactly where a stopped
        wait_until(lambda: all_committed(kafka, ends), TIMEOUT_S, "the group's commit at the end")

        with sink_shard(kafka, tmp_path, "a", lake, **NEVER_EXPORTS) as crashing:  # 2. a crash
            batch, share = produce_stored(kafka, 180, 80, crashing, partitions_of(kafka, crashing, b)["a"])
            produced |= batch
            assert crashing.stop(signal.SIGKILL) == -signal.SIGKILL
        assert partitions_of(kafka, b)["b"] == held["a"] | held["b"]
        produced |= produce(kafka, 260, 40)
        wait_for_lake(lake, len(produced), rows=len(produced))  # b wrote the dead shard's share again
        wait_until(lambda: all_committed(kafka, ends), TIMEOUT_S, "the group's commit at the end")

        with sink_shard(kafka, tmp_path, "a", lake, **FAST) as back:  # its unexported copies reach the lake
            partitions_of(kafka, back, b)
            wait_for_lake(lake, len(produced), rows=len(produced) + len(share))
            assert back.stop(signal.SIGTERM) == 0
        assert b.stop(signal.SIGTERM) == 0

    ids, rows = lake_ids(lake)
    assert sorted(ids) == sorted(produced)  # every event once: none missing, no duplicate left in the views
    assert rows == len(produced) + len(share)  # the files hold the crashed shard's share twice
    in_files = Counter(lake_file_ids(lake))
    assert {event_id for event_id, count in in_files.items() if count > 1} == share


def produce_stored(
    kafka: KafkaSettings, first: int, count: int, shard: ShardProcess, its: set[tuple[str, int]]
) -> tuple[dict[str, tuple[str, int]], set[str]]:
    """Produce events, then wait until ``shard`` (holding partitions ``its``) stored its share of them.

    Returns the events' places and the shard's share.
    """
    batch = produce(kafka, first, count)
    share = {event_id for event_id, where in batch.items() if where in its}
    assert 0 < len(share) < len(batch)
    wait_until(lambda: stored(shard) == len(share), TIMEOUT_S, f"shard {shard.name} to store its share")
    return batch, share


def stored(shard: ShardProcess) -> int:
    """Rows the shard has written to its DuckDB file, from its latest progress line."""
    stats = shard.stats()
    return int(stats.get("interactions", 0)) + int(stats.get("feedback", 0))
