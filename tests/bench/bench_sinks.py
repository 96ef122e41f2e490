"""Events/s into DuckDB: one sink process against two sink shards in one consumer group.

The same pre-filled topic (``BENCH_SINKS_EVENTS`` realistic interactions, default 200,000, about
1.5 KB each, lz4 as the gateway sends them; 4 partitions) is read in one run by ``flywheel sink
run`` processes in a fresh consumer group each time: one shard alone, then two shards splitting
the partitions, alternated ``BENCH_SINKS_REPEATS`` times (default 2). Each shard writes its own
DuckDB file; the lake export is off during the measurement (its interval is an hour), so this is
the sink alone. Rates come from the rows' own ``ingested_at`` (each batch's transaction time) in
the DuckDB files, read after the processes are killed: distinct events from the first batch to
the last, and for two shards also rows over the span in which both were writing. The first shard
to join reads alone until the second arrives and the group rebalances; the partitions it hands
over resume at the group's commit, which does not exist yet (a shard commits what the lake
holds, and the export is off), so the new owner reads them from the start again: those rows
are stored twice (counted and printed), as they would be around any rebalance among live
shards, from their last commit.

**The 2-core limit.** On this machine one sink already keeps about one core busy (decoding in
Python, parsing and writing in DuckDB) and the broker and this process share the other, so a
second shard competes for the same two cores: the ratio says what a second process gives here,
not what it gives where each shard has cores of its own. CPU seconds per 100,000 events, summed
over the shards from their first progress line on (so without the interpreter's start), show what
the split costs in work.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers

from local_kafka import fill, fresh_topics, local_broker
from replicas import machine
from sink_processes import ShardProcess, sink_shard

from feedback.settings import KafkaSettings

EVENTS = int(os.environ.get("BENCH_SINKS_EVENTS", "200000"))
REPEATS = int(os.environ.get("BENCH_SINKS_REPEATS", "2"))
PARTITIONS = 4  # two apiece for two shards
TIMEOUT_S = 300.0  # one configuration reads the whole topic within this, seconds
SETTINGS = {"lake_export_interval_s": 3600}  # the sink alone: no export while measuring
TICKS = os.sysconf("SC_CLK_TCK")
IDLE_S = 1.5  # the shards are done once their rows stopped growing for this long (progress lines every 0.2 s)


@dataclass
class Run:
    """One configuration's reading of the whole topic."""

    shards: int
    rate: float  # distinct events/s from the first batch to the last, all shards together
    overlap_rate: float  # rows/s while every shard was writing (= rate for one shard)
    cpu_s_per_100k: float  # CPU seconds of the shard processes per 100,000 rows
    duplicates: int  # rows of an event another shard also stored (read again after a rebalance)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def spans(db: Path) -> tuple[int, float, float]:
    """Rows in a shard's DuckDB file, and the first and last batch's transaction time (epoch seconds)."""
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(
            "SELECT count(*), epoch(min(ingested_at)), epoch(max(ingested_at)) FROM interactions"
        ).fetchone()
    assert row is not None
    return int(row[0]), float(row[1]), float(row[2])


def distinct_events(dbs: list[Path]) -> int:
    """Distinct event ids over the shards' files."""
    with duckdb.connect() as con:
        for db in dbs:
            con.execute(f"ATTACH '{db}' AS {db.stem} (READ_ONLY)")
        union = " UNION ALL ".join(f"SELECT event_id FROM {db.stem}.interactions" for db in dbs)  # noqa: S608
        row = con.execute(f"SELECT count(DISTINCT event_id) FROM ({union})").fetchone()  # noqa: S608
    return int(row[0]) if row else 0


def rows_between(dbs: list[Path], start: float, end: float) -> int:
    """Rows of all ``dbs`` whose batch began in [start, end]."""
    total = 0
    for db in dbs:
        with duckdb.connect(str(db), read_only=True) as con:
            sql = "SELECT count(*) FROM interactions WHERE epoch(ingested_at) BETWEEN ? AND ?"
            row = con.execute(sql, [start, end]).fetchone()
        total += int(row[0]) if row else 0
    return total


def read_all(kafka: KafkaSettings, workdir: Path, shards: int) -> Run:
    """Start ``shards`` sink processes in a fresh group, wait until they stored the topic, kill them, measure."""
    group = kafka.model_copy(update={"consumer_group": f"bench-sinks-{uuid.uuid4().hex[:8]}"})
    home, lake = workdir / group.consumer_group, workdir / "lake"
    with ExitStack() as stack:
        started: list[ShardProcess] = [
            stack.enter_context(sink_shard(group, home, f"s{n}", lake, progress_s=0.2, **SETTINGS))
            for n in range(shards)
        ]
        baseline = wait_until_stored(started, home)
        cpu = sum(cpu_seconds(p.proc.pid) - baseline[p.name][0] for p in started)
        for shard in started:
            shard.stop(signal.SIGKILL)  # no final export: it is not part of the measurement
    measured = [spans(p.db) for p in started]
    rows, events = sum(m[0] for m in measured), distinct_events([p.db for p in started])
    assert events == EVENTS, f"{events} distinct events of {EVENTS}"
    first, last = min(m[1] for m in measured), max(m[2] for m in measured)
    both_from, both_to = max(m[1] for m in measured), min(m[2] for m in measured)
    overlap = rows_between([p.db for p in started], both_from, both_to) / max(both_to - both_from, 1e-9)
    after_baseline = rows - sum(stored for _, stored in baseline.values())
    return Run(shards, events / (last - first), overlap, cpu / after_baseline * 100_000, rows - events)


def wait_until_stored(started: list[ShardProcess], home: Path) -> dict[str, tuple[float, int]]:
    """Wait until the shards stored every event and went idle; per shard, its CPU seconds and rows at its first
    progress line.

    The first progress line comes once the process has started (imports take seconds of CPU), so the
    CPU spent from there on is the sink's. Rows stored twice count in the shards' totals, so they are
    done once the total reached the topic's size and stayed put for ``IDLE_S``.
    """
    baseline: dict[str, tuple[float, int]] = {}
    deadline = time.monotonic() + TIMEOUT_S
    total, since = -1, time.monotonic()
    while len(baseline) < len(started) or total < EVENTS or time.monotonic() - since < IDLE_S:
        if time.monotonic() > deadline or any(p.proc.poll() is not None for p in started):
            raise SystemExit(f"sinks: {len(started)} shard(s) did not store {EVENTS} events (logs in {home})")
        counts = {shard.name: shard.stats() for shard in started}
        for shard in started:
            if shard.name not in baseline and counts[shard.name]:
                baseline[shard.name] = (cpu_seconds(shard.proc.pid), int(counts[shard.name]["interactions"]))
        now = sum(int(c.get("interactions", 0)) for c in counts.values())
        if now != total:
            total, since = now, time.monotonic()
        time.sleep(0.05)
    return baseline


def main() -> None:
    print(machine())
    print(f"{EVENTS} interactions on {PARTITIONS} partitions; each configuration {REPEATS} times, alternated")
    runs: list[Run] = []
    with local_broker() as broker_kafka, tempfile.TemporaryDirectory() as tmp:
        kafka = fresh_topics(broker_kafka, partitions=PARTITIONS)
        fill(kafka, EVENTS)
        for _ in range(REPEATS):
            for shards in (1, 2):
                run = read_all(kafka, Path(tmp), shards)
                runs.append(run)
                print(
                    f"  {shards} sink process(es): {run.rate:>9,.0f} events/s first to last batch, "
                    f"{run.overlap_rate:>9,.0f} rows/s while all wrote; {run.cpu_s_per_100k:.1f} CPU s per 100k rows; "
                    f"{run.duplicates} rows stored twice"
                )
    one = statistics.median(r.rate for r in runs if r.shards == 1)
    two = statistics.median(r.rate for r in runs if r.shards == 2)
    two_overlap = statistics.median(r.overlap_rate for r in runs if r.shards == 2)
    print(f"  median events/s: 1 sink {one:,.0f}, 2 sinks {two:,.0f} ({two_overlap:,.0f} while both wrote)")
    print(f"  2 sinks / 1 sink: {two / one:.2f} first to last batch, {two_overlap / one:.2f} while both wrote")
    print(f"  ({os.cpu_count()} cores shared by the broker, the sinks and this process; see the docstring)")


if __name__ == "__main__":
    main()
