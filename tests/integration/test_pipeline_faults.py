"""Faults on the event pipeline, each counting rows exactly: nothing lost, nothing doubled.

- The broker stops during traffic and comes back: the gateway's producer keeps every event in
  its write-ahead log, the sink reconnects, every event lands once. The outage lasts
  ``FLYWHEEL_TEST_OUTAGE_S`` seconds (5 by default, to keep the suite short; run with 30 for the
  full fault: ``FLYWHEEL_TEST_OUTAGE_S=30 pytest tests/integration/test_pipeline_faults.py``).
- The worker (a real ``flywheel worker`` process) is SIGKILLed while it writes batches, and
  restarted on the same DuckDB file: it resumes from the offsets stored with the rows.
- The gateway's event path (tests/integration/pipeline_publisher.py: the gateway's write-ahead log
  and producer, without the model) is SIGKILLed while Kafka is down, and while events are in
  flight with Kafka up; a restart replays the log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import httpx
import pytest
from api_keys import Keys, bearer
from kafka import KafkaProducer
from pipeline_events import interaction, run_in_thread, wait_until
from test_kafka_outage import broker_on  # starts and always stops a broker of the test's own

from feedback.producer import EventProducer, kafka_sender_factory
from feedback.settings import KafkaSettings, LocalKafkaSettings, Settings
from feedback.store import DuckDBStore
from feedback.topics import ensure_topics
from feedback.wal import WriteAheadLog
from services.cli import broker
from services.cli.ports import free_port
from services.worker.app import run_sink_forever
from services.worker.sink import Sink

OUTAGE_S = float(os.environ.get("FLYWHEEL_TEST_OUTAGE_S", "5"))
PUBLISHER = Path(__file__).with_name("pipeline_publisher.py")
COUNT_SQL = "SELECT count(*) AS n, count(DISTINCT event_id) AS events, count(DISTINCT seed) AS seeds FROM interactions"


def test_broker_outage_during_traffic_loses_nothing(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    local = LocalKafkaSettings(port=free_port(), controller_port=free_port(), data_dir=tmp_path_factory.mktemp("out"))
    kafka = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{local.port}", bootstrap_timeout_ms=1000, request_timeout_ms=5000, local=local
    )
    rate, before_s, after_s = 50, 3.0, 3.0
    total = int(rate * (before_s + OUTAGE_S + after_s))
    with broker_on(local):
        ensure_topics(kafka)
        store = DuckDBStore(tmp_path / "outage.duckdb")
        sink = Sink(kafka, store, batch_max=200, poll_timeout_ms=200)
        stop = threading.Event()
        sink_thread = run_in_thread(lambda: run_sink_forever(sink, Settings(kafka=kafka), stop), "sink")
        wal = WriteAheadLog(tmp_path / "wal", max_bytes=1 << 30, segment_bytes=1 << 20, fsync_each=False)
        producer = EventProducer(wal, kafka_sender_factory(kafka), fsync_interval_s=0.05)
        producer.start()

        def traffic() -> None:
            start = time.monotonic()
            for n in range(total):
                time.sleep(max(0.0, start + n / rate - time.monotonic()))
                producer.publish(kafka.topics.interactions, interaction(n))

        publisher = run_in_thread(traffic, "traffic")
        time.sleep(before_s)
        assert broker.run_script("stop", local, capture=True).returncode == 0
        wait_until(lambda: producer.health().pending_events > rate, what="events to queue in the log")
        time.sleep(max(0.0, OUTAGE_S - 1))
        restarted = broker.run_script("start", local, capture=True)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        publisher.join(timeout=before_s + OUTAGE_S + after_s + 60)
        assert producer.flush(120), producer.health()
        wait_until(lambda: store.query(COUNT_SQL)[0]["n"] >= total, timeout=120, what="every event in DuckDB")
        stop.set()
        sink.stop()
        sink_thread.join(timeout=60)
        producer.close(1)
        counts = store.query(COUNT_SQL)
        store.close()
    assert counts == [{"n": total, "events": total, "seeds": total}]


def worker_env(kafka: KafkaSettings, db: Path) -> dict[str, str]:
    topics = kafka.topics
    return os.environ | {
        "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "FLYWHEEL_KAFKA__CONSUMER_GROUP": kafka.consumer_group,
        "FLYWHEEL_KAFKA__TOPICS__INTERACTIONS": topics.interactions,
        "FLYWHEEL_KAFKA__TOPICS__FEEDBACK": topics.feedback,
        "FLYWHEEL_KAFKA__TOPICS__AUDIT": topics.audit,
        "FLYWHEEL_KAFKA__TOPICS__DEAD_LETTER": topics.dead_letter,
        "FLYWHEEL_KAFKA__TOPICS__KEYS": topics.keys,
        "FLYWHEEL_KAFKA__TOPICS__PARTITIONS": str(topics.partitions),
        "FLYWHEEL_DUCKDB__PATH": str(db),
        "FLYWHEEL_WORKER__BATCH_MAX_EVENTS": "300",
        "FLYWHEEL_WORKER__POLL_TIMEOUT_MS": "100",
    }


@contextmanager
def worker_process(kafka: KafkaSettings, db: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    log = (db.parent / f"worker-{port}.log").open("wb")  # kept for a failing test's reader
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "worker", "--port", str(port)],
        env=worker_env(kafka, db),
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url) or proc.poll() is not None, timeout=120, what="the worker to start")
        assert proc.poll() is None, "the worker exited at start"
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        log.close()


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def sink_rows(url: str, key: str) -> int:
    rows: int = httpx.get(f"{url}/v1/sink/status", headers=bearer(key), timeout=30).json()["rows"]["interactions"]
    return rows


def test_worker_killed_mid_batch_resumes_without_loss_or_duplicates(
    kafka_isolated: KafkaSettings, api_keys: Keys, tmp_path: Path
) -> None:
    key = api_keys["developer"]
    total = 10_000
    producer = KafkaProducer(bootstrap_servers=kafka_isolated.bootstrap_servers, acks="all", compression_type="lz4")
    for n in range(total):
        event = interaction(n)
        producer.send(kafka_isolated.topics.interactions, key=event.kafka_key(), value=event.encode())
    producer.flush(60)
    producer.close()
    db = tmp_path / "worker.duckdb"

    with worker_process(kafka_isolated, db) as (proc, url):
        wait_until(lambda: sink_rows(url, key) >= 2000, timeout=120, what="the worker to be busy")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with duckdb.connect(str(db)) as con:  # what the killed worker had committed
        row = con.execute("SELECT count(*) FROM interactions").fetchone()
    killed_at = row[0] if row else 0
    assert 2000 <= killed_at < total  # killed while batches were still being written

    with worker_process(kafka_isolated, db) as (_proc, url):
        wait_until(lambda: sink_rows(url, key) >= total, timeout=180, what="the restarted worker to catch up")
        status = httpx.get(f"{url}/v1/sink/status", headers=bearer(key), timeout=30).json()
    assert status["total_lag"] == 0
    with duckdb.connect(str(db)) as con:
        counts = con.execute(COUNT_SQL).fetchall()
        offsets = con.execute(
            "SELECT sum(next_offset) FROM kafka_offsets WHERE topic = ?", [kafka_isolated.topics.interactions]
        ).fetchall()
    assert counts == [(total, total, total)]
    assert offsets == [(total,)]


def publisher(wal: Path, bootstrap: str, topic: str, *, count: int, drain: bool = False) -> subprocess.Popen[str]:
    args = [sys.executable, str(PUBLISHER), "--wal", str(wal), "--bootstrap", bootstrap, "--topic", topic]
    args += ["--count", str(count)] + (["--drain"] if drain else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after_publishing(proc: subprocess.Popen[str], count: int) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == f"published {count}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reaps it and closes the pipes


def drain(wal: Path, kafka: KafkaSettings) -> None:
    replay = publisher(wal, kafka.bootstrap_servers, kafka.topics.interactions, count=0, drain=True)
    out, err = replay.communicate(timeout=180)
    assert replay.returncode == 0, err
    assert out.splitlines() == ["published 0", "drained"]


def sink_all(kafka: KafkaSettings, db: Path, total: int) -> list[dict[str, int]]:
    store = DuckDBStore(db)
    sink = Sink(kafka, store, batch_max=500, poll_timeout_ms=100)
    thread = run_in_thread(sink.run, "sink")
    try:
        wait_until(lambda: sink.stats.interactions >= total, timeout=120, what="every event in DuckDB")
        time.sleep(1)  # anything more (a duplicate the dedup let through) would show now
    finally:
        sink.stop()
        thread.join(timeout=60)
    counts: list[dict[str, int]] = store.query(COUNT_SQL)
    store.close()
    return counts


def test_gateway_killed_while_kafka_is_down_replays_after_restart(
    kafka_isolated: KafkaSettings, tmp_path: Path
) -> None:
    down = f"127.0.0.1:{free_port()}"  # nothing listens: Kafka is down for this gateway
    first = publisher(tmp_path / "wal", down, kafka_isolated.topics.interactions, count=300)
    kill_after_publishing(first, 300)
    assert len(list((tmp_path / "wal").glob("*.wal"))) == 1
    drain(tmp_path / "wal", kafka_isolated)  # the restarted gateway reaches Kafka
    assert sink_all(kafka_isolated, tmp_path / "g.duckdb", 300) == [{"n": 300, "events": 300, "seeds": 300}]


def test_gateway_killed_with_events_in_flight_replays_without_duplicates(
    kafka_isolated: KafkaSettings, tmp_path: Path
) -> None:
    first = publisher(
        tmp_path / "wal", kafka_isolated.bootstrap_servers, kafka_isolated.topics.interactions, count=3000
    )
    kill_after_publishing(first, 3000)  # some acknowledged, some in flight, some not yet sent
    drain(tmp_path / "wal", kafka_isolated)
    assert sink_all(kafka_isolated, tmp_path / "g.duckdb", 3000) == [{"n": 3000, "events": 3000, "seeds": 3000}]
