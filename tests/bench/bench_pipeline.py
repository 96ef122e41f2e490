"""The event pipeline's speed, on a real local broker started for the run.

1. Sink throughput: events/s from Kafka into DuckDB (decode, validate, Arrow batch, dedup, offsets
   in the transaction) against a bare kafka-python consumer reading the same topic without
   decoding or writing, same consumer settings. Targets: >= 0.8 of the bare consumer and
   >= 30,000 events/s. Both also print their process CPU time per event, which other load on
   the machine disturbs far less than events/s, and each sink stage's CPU cost on its own
   (pydantic's decoder, the previous one, beside the compiled one), so what bounds the ratio shows.
2. Freshness: a synthetic producer publishes at 200 events/s through the write-ahead log and
   Kafka while the sink and the lake export run; the time from ``publish`` to the row being
   visible in DuckDB (polled every 10 ms on another cursor) and in the redacted lake (polled
   every 100 ms). Targets: p99 <= 2 s, and <= export interval + 2 s for the lake.
3. Producer cost on the request path: ``EventProducer.publish`` (write-ahead log included)
   against kafka-python's bare ``send``. Target: p99 <= 1 ms.

Events are realistic (about 1.5 KB, every field set; tests/pipeline_events.py). Each measurement
warms up once and is repeated 3 times; medians are printed, with the machine.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import duckdb
from kafka import KafkaConsumer, KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared event factory

from local_kafka import fill, fresh_topics, local_broker
from pipeline_events import interaction

from feedback.codec import decode_fast
from feedback.events import decode_event
from feedback.ingest import EventBatch
from feedback.lake import Lake
from feedback.producer import EventProducer, kafka_sender_factory
from feedback.settings import KafkaSettings, Settings
from feedback.store import DuckDBStore
from feedback.wal import WriteAheadLog
from services.worker.app import run_lake_forever
from services.worker.sink import DEFAULT_FETCH_MAX_BYTES, Sink

THROUGHPUT_EVENTS = 60_000
BATCH = 5_000  # events per poll and per DuckDB transaction, for both competitors
REPEATS = 3
FRESHNESS_RATE = 200  # events/s
FRESHNESS_SECONDS = 10
LAKE_INTERVAL_S = 2.0  # lake export interval during the freshness runs
PUBLISH_EVENTS = 5_000


def bare_consumer_rate(kafka: KafkaSettings, count: int) -> tuple[float, float]:
    """Events/s of a plain kafka-python consumer reading ``count`` records, and CPU us per event."""
    consumer = KafkaConsumer(
        kafka.topics.interactions,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # the sink's own fetch settings (Sink._connect with its defaults): a fair competitor
        max_poll_records=BATCH,
        max_partition_fetch_bytes=DEFAULT_FETCH_MAX_BYTES,
        fetch_max_bytes=DEFAULT_FETCH_MAX_BYTES * 4,
    )
    seen, start, cpu = 0, 0.0, 0.0
    while seen < count:
        polled = consumer.poll(timeout_ms=500, max_records=BATCH)
        if polled and not start:
            start, cpu = time.perf_counter(), time.process_time()  # from the first records: group join is not reading
        seen += sum(len(records) for records in polled.values())
    rate, cpu_us = seen / (time.perf_counter() - start), (time.process_time() - cpu) / seen * 1e6
    consumer.close()
    return rate, cpu_us


def sink_rate(kafka: KafkaSettings, count: int, directory: Path) -> tuple[float, float]:
    """Events/s of the sink reading ``count`` records into a fresh DuckDB file, and CPU us per event."""
    store = DuckDBStore(directory / f"{uuid.uuid4().hex}.duckdb")
    group = kafka.model_copy(update={"consumer_group": f"sink-{uuid.uuid4().hex[:8]}"})
    sink = Sink(group, store, batch_max=BATCH, poll_timeout_ms=500)
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    while sink.stats.batches == 0:
        time.sleep(0.001)
    start, cpu = time.perf_counter(), time.process_time()  # from the first batch, as for the bare consumer
    first = sink.stats.interactions
    while sink.stats.interactions < count:
        time.sleep(0.005)
    written = sink.stats.interactions - first
    rate, cpu_us = written / (time.perf_counter() - start), (time.process_time() - cpu) / written * 1e6
    sink.stop()
    thread.join(timeout=60)
    store.close()
    return rate, cpu_us


def stage_costs(directory: Path) -> dict[str, float]:
    """CPU us per event of each sink stage on its own, one batch at a time, best of 3 after a warm-up."""
    store = DuckDBStore(directory / f"stages-{uuid.uuid4().hex}.duckdb")
    costs: dict[str, list[float]] = {}
    clock = time.process_time
    for b in range(REPEATS + 1):
        raws = [interaction(BATCH * b + n).encode() for n in range(BATCH)]
        t0 = clock()
        for raw in raws:
            decode_event(raw)
        t1 = clock()
        decoded = [decode_fast(raw) for raw in raws]
        t2 = clock()
        batch = EventBatch()
        for n, (event, raw) in enumerate(decoded):
            batch.add(event, raw, 0, BATCH * b + n)
        batch.advance("bench", 0, BATCH * (b + 1))
        t3 = clock()
        store.write_events(batch)
        t4 = clock()
        for name, seconds in (
            ("pydantic decode_event (the previous decoder)", t1 - t0),
            ("msgspec decode_fast", t2 - t1),
            ("EventBatch.add", t3 - t2),
            ("DuckDB write: Arrow, JSON parse, insert, commit", t4 - t3),
        ):
            costs.setdefault(name, []).append(seconds / BATCH * 1e6)
    store.close()
    return {name: min(values[1:]) for name, values in costs.items()}


def throughput(kafka: KafkaSettings, directory: Path) -> None:
    """Sink vs bare consumer on the same topic, alternating, after one warm-up each."""
    topic = fresh_topics(kafka)
    fill(topic, THROUGHPUT_EVENTS)
    bare_consumer_rate(topic, THROUGHPUT_EVENTS)
    sink_rate(topic, THROUGHPUT_EVENTS, directory)
    bare, ours = [], []
    for _ in range(REPEATS):
        bare.append(bare_consumer_rate(topic, THROUGHPUT_EVENTS))
        ours.append(sink_rate(topic, THROUGHPUT_EVENTS, directory))
    b, s = statistics.median(r for r, _ in bare), statistics.median(r for r, _ in ours)
    b_cpu, s_cpu = statistics.median(c for _, c in bare), statistics.median(c for _, c in ours)
    print(f"sink throughput, {THROUGHPUT_EVENTS} events of {len(interaction(0).encode())} bytes, median of {REPEATS}:")
    for label, rate, runs, cpu in (
        ("bare kafka-python consumer", b, bare, b_cpu),
        ("sink into DuckDB", s, ours, s_cpu),
    ):
        print(f"  {label:<26} {rate:>9,.0f} events/s   runs {[round(r) for r, _ in runs]}   CPU {cpu:.1f} us/event")
    print(f"  sink / bare = {s / b:.2f} (target >= 0.80); sink {s:,.0f} events/s (target >= 30,000)")
    print(f"  CPU per event, sink / bare = {s_cpu / b_cpu:.2f} (the ratio's bound when the cores are shared)")
    print(f"  per-stage CPU, best of 3 batches of {BATCH}:")
    for name, us in stage_costs(directory).items():
        print(f"    {name:<50} {us:6.2f} us/event")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def freshness_run(kafka: KafkaSettings, directory: Path) -> tuple[list[float], list[float]]:
    """Seconds from publish to visibility in DuckDB and in the lake, for every event of one paced run."""
    topic = fresh_topics(kafka)
    store = DuckDBStore(directory / f"{uuid.uuid4().hex}.duckdb")
    sink = Sink(topic, store, batch_max=5000, poll_timeout_ms=100)
    lake = Lake(store, directory / f"lake-{uuid.uuid4().hex[:8]}")
    done = threading.Event()
    settings = Settings(kafka=topic, worker={"lake_export_interval_s": LAKE_INTERVAL_S})
    threads = [
        threading.Thread(target=sink.run, daemon=True),
        threading.Thread(target=run_lake_forever, args=(lake, settings, done), daemon=True),
    ]
    producer = new_producer(topic, directory)
    producer.start()
    published: dict[str, float] = {}
    seen: dict[str, float] = {}
    in_lake: dict[str, float] = {}
    threads += [
        threading.Thread(target=watch_rows, args=(store, seen, done), daemon=True),
        threading.Thread(target=watch_lake, args=(lake.root, in_lake, done), daemon=True),
    ]
    for thread in threads:
        thread.start()
    total = FRESHNESS_RATE * FRESHNESS_SECONDS
    start = time.perf_counter()
    for n in range(total):
        time.sleep(max(0.0, start + n / FRESHNESS_RATE - time.perf_counter()))
        event = interaction(n)
        published[event.event_id] = time.perf_counter()
        producer.publish(topic.topics.interactions, event)
    deadline = time.monotonic() + 30
    while (len(seen) < total or len(in_lake) < total) and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    sink.stop()
    for thread in threads:
        thread.join(timeout=60)
    producer.close(1)
    store.close()
    return delays(published, seen), delays(published, in_lake)


def delays(published: dict[str, float], seen: dict[str, float]) -> list[float]:
    """Seconds from publish to first sight per event; an event never seen counts as infinite."""
    return [seen[k] - t if k in seen else float("inf") for k, t in published.items()]


def watch_lake(root: Path, seen: dict[str, float], done: threading.Event) -> None:
    """Record when each event_id first appears in the redacted lake, polling every 100 ms."""
    files = str(root / "redacted" / "interactions" / "*" / "*.parquet")
    while not done.is_set():
        with duckdb.connect() as con:
            try:
                rows = con.execute("SELECT event_id FROM read_parquet(?)", [files]).fetchall()
            except duckdb.Error:  # no file yet
                rows = []
        now = time.perf_counter()
        for (event_id,) in rows:
            seen.setdefault(event_id, now)
        time.sleep(0.1)


def watch_rows(store: DuckDBStore, seen: dict[str, float], done: threading.Event) -> None:
    """Record when each event_id first becomes visible, polling every 10 ms."""
    last = -1
    while not done.is_set():
        rows = store.query("SELECT event_id, rowid FROM interactions WHERE rowid > ?", [last])
        now = time.perf_counter()
        for row in rows:
            seen.setdefault(row["event_id"], now)
            last = max(last, row["rowid"])
        time.sleep(0.01)


def new_producer(kafka: KafkaSettings, directory: Path) -> EventProducer:
    """The gateway's producer: write-ahead log with 50 ms batched fsync, then Kafka."""
    wal = WriteAheadLog(
        directory / f"wal-{uuid.uuid4().hex[:8]}", max_bytes=1 << 30, segment_bytes=8 << 20, fsync_each=False
    )
    return EventProducer(wal, kafka_sender_factory(kafka), fsync_interval_s=0.05)


def freshness(kafka: KafkaSettings, directory: Path) -> None:
    """p50/p99 freshness at 200 events/s over 3 runs (after a short warm-up run)."""
    global FRESHNESS_SECONDS
    seconds, FRESHNESS_SECONDS = FRESHNESS_SECONDS, 2
    freshness_run(kafka, directory)
    FRESHNESS_SECONDS = seconds
    runs = [freshness_run(kafka, directory) for _ in range(REPEATS)]
    print(
        f"freshness at {FRESHNESS_RATE} events/s, {FRESHNESS_SECONDS} s per run, lake export every {LAKE_INTERVAL_S}s:"
    )
    for where, index, budget in (("DuckDB", 0, 2.0), ("the lake", 1, LAKE_INTERVAL_S + 2)):
        print(f"  publish -> visible in {where}:")
        for i, run in enumerate(runs):
            p50, p99 = percentile(run[index], 0.5), percentile(run[index], 0.99)
            print(f"    run {i + 1}: p50 {p50 * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms")
        p99 = statistics.median(percentile(run[index], 0.99) for run in runs)
        print(
            f"    median p99 {p99 * 1000:.1f} ms (target <= {budget * 1000:.0f} ms): {p99 / budget:.3f} of the budget"
        )


def publish_latencies(publish: Callable[[int], None], count: int) -> list[float]:
    """Seconds each call took, paced at 2,000 calls/s (a busy gateway, not a flood)."""
    out = []
    start = time.perf_counter()
    for n in range(count):
        time.sleep(max(0.0, start + n / 2000 - time.perf_counter()))
        t = time.perf_counter()
        publish(n)
        out.append(time.perf_counter() - t)
    return out


def producer_cost(kafka: KafkaSettings, directory: Path) -> None:
    """p50/p99 of EventProducer.publish (log included) vs kafka-python's bare send."""
    topic = fresh_topics(kafka)
    events = [interaction(n) for n in range(PUBLISH_EVENTS)]
    ours = new_producer(topic, directory)
    ours.start()
    bare = KafkaProducer(bootstrap_servers=topic.bootstrap_servers, acks="all", linger_ms=5, compression_type="lz4")
    name = topic.topics.interactions
    runs: dict[str, list[float]] = {"EventProducer.publish (WAL + Kafka)": [], "kafka-python send (no WAL)": []}
    calls: dict[str, Callable[[int], None]] = {
        "EventProducer.publish (WAL + Kafka)": lambda n: ours.publish(name, events[n]) and None,
        "kafka-python send (no WAL)": lambda n: (
            bare.send(name, key=events[n].kafka_key(), value=events[n].encode()) and None
        ),
    }
    for call in calls.values():
        publish_latencies(call, 500)  # warm-up
    for _ in range(REPEATS):
        for label, call in calls.items():
            runs[label].append(percentile(publish_latencies(call, PUBLISH_EVENTS), 0.99))
    ours.close(5)
    bare.close()
    print(f"producer cost on the request path, {PUBLISH_EVENTS} publishes at 2,000/s, p99 per run:")
    for label, p99s in runs.items():
        print(
            f"  {label:<38} median p99 {statistics.median(p99s) * 1e6:8.1f} us   runs {[round(p * 1e6) for p in p99s]}"
        )
    ratio = statistics.median(runs["EventProducer.publish (WAL + Kafka)"]) / statistics.median(
        runs["kafka-python send (no WAL)"]
    )
    print(f"  publish / bare send p99 = {ratio:.2f}; target p99 <= 1000 us")


def main() -> None:
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    only = set(sys.argv[1:])
    with local_broker() as kafka, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for name, bench in (("throughput", throughput), ("freshness", freshness), ("producer", producer_cost)):
            if not only or name in only:
                bench(kafka, directory)
                print()


if __name__ == "__main__":
    main()
