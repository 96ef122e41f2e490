"""Faults on a 3-broker cluster under steady traffic, counting every row: nothing lost, nothing doubled.

Three Kafka nodes (``tests/kafka_cluster.py``) carry the project's topics with 3 copies, 2 in sync for
a write; two ``flywheel gateway`` replicas (the real default model, one torch thread each) serve
behind the round-robin proxy; two ``flywheel sink run`` shards write into one lake. Client threads
send chat requests through the proxy (each with a ``user`` of its own, one in four streamed) and
feedback on every other answer, and keep each request's outcome. With the traffic running:

1. broker node 2 is SIGKILLed, stays down ``FLYWHEEL_TEST_OUTAGE_S`` seconds (default 30, the
   issue's fault; the same knob as ``test_pipeline_faults.py``), is started again, and its replicas
   catch up;
2. sink shard a is SIGKILLed; shard b takes its partitions at the group's last commit;
3. gateway b is SIGKILLed while long answers are under way (the clients ask for LONG_TOKENS around
   the kill, so requests are caught in flight); the proxy finds its port refusing and sends every
   later request to gateway a. Gateway b is restarted at once on its write-ahead log (on a new port,
   outside the proxy), which replays what Kafka had not acknowledged.

Then the traffic stops and the sinks drain; shard a restarts on its DuckDB file, exports what it
held, and both shards stop. Every phase is timed and a summary line printed (``pytest -s``).
Checked exactly:

- the only failed requests are those in flight at gateway b when it died: each began before the
  process had ended and ended after the kill, with the proxy's ``upstream_failed`` or a stream cut off, and the proxy
  logged each against gateway b;
- the analyst views hold one served interaction for every answered chat request and one row for
  every accepted feedback, and nothing else but at most one row per failed request (gateway b may
  have logged its event before it died); every event on Kafka is in the views, and only those;
- raw copies: each shard's DuckDB file and each shard's lake files hold every event once; the only
  events in the lake twice are ones the killed shard had stored before it died and the survivor
  wrote again (the views count them once). Copies on Kafka itself (the producer's resends after
  broker errors, the replayed log) are counted and reported.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb
import httpx
import pytest
from api_keys import gateway_process_env, publish_keys
from cluster_traffic import TIMEOUT_S, Clock, Traffic
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka_cluster import Cluster, cluster_settings, replicas, running_cluster
from pipeline_events import process_ended, wait_until
from sink_processes import ShardProcess, sink_shard
from starlette.applications import Starlette
from test_sink_shards import all_committed, partitions_of

from feedback.events import decode_event
from feedback.sandbox import sandbox_connection
from feedback.settings import KafkaSettings, WalSettings
from feedback.topics import ensure_topics
from feedback.wal import WriteAheadLog
from services.cli.processes import Service, service_process
from services.proxy.app import create_app
from services.proxy.config import ProxyConfig
from services.worker.status import EndOffsets

T = TypeVar("T")
ServeApp = Callable[[Starlette], AbstractContextManager[str]]  # conftest's serve_app: any ASGI app

OUTAGE_S = float(os.environ.get("FLYWHEEL_TEST_OUTAGE_S", "30"))
CLIENTS = 4  # client threads, one request at a time each
WARM_S = 5.0  # traffic before the first fault
AFTER_S = 8.0  # traffic after the gateway is killed
KILLED_NODE = 2
SINK = {"lake_export_interval_s": 0.5, "poll_timeout_ms": 100, "sink_session_timeout_ms": 6000}
IN_FLIGHT = {"upstream_failed", "RemoteProtocolError"}  # the proxy's 502, or a stream it cut off
REFUSED = "refused the connection"  # services.proxy.forwarding's log of an upstream skipped
PROXY_FAILURES = ("failed before answering", "broke off its answer")  # services.proxy.forwarding's log


def gateway_env(kafka: KafkaSettings, workdir: Path) -> dict[str, str]:
    """A replica's settings, its write-ahead log in ``workdir``; key limits far above the test's rate."""
    workdir.mkdir(parents=True, exist_ok=True)
    limits = {"RATE_PER_S": "10000", "BURST": "10000", "MAX_IN_FLIGHT": "64"}
    return gateway_process_env(kafka, workdir, workdir.parent / "registry") | {
        f"FLYWHEEL_GATEWAY__LIMITS__{name}": value for name, value in limits.items()
    }


def ready(service: Service) -> None:
    wait_until(lambda: httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200, TIMEOUT_S, "readiness")


def drained(service: Service) -> bool:
    """Whether the gateway's write-ahead log holds nothing Kafka has not acknowledged."""
    pending: int = httpx.get(f"{service.url}/healthz", timeout=10).json()["pending_events"]
    return pending == 0


def logged_events(wal_dir: Path) -> int:
    """Events a dead gateway's write-ahead log holds for Kafka (what its restart replays)."""
    wal = WalSettings()
    log = WriteAheadLog(wal_dir, max_bytes=wal.max_bytes, segment_bytes=wal.segment_bytes, fsync_each=False)
    try:
        return log.pending_count
    finally:
        log.close()


def in_sync(cluster: Cluster, kafka: KafkaSettings) -> bool:
    """Whether every partition of the data topics has its 3 replicas in sync."""
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        topics = (kafka.topics.interactions, kafka.topics.feedback, kafka.topics.audit)
        return all(replicas(admin, t) == [(3, 3)] * kafka.topics.partitions for t in topics)
    finally:
        admin.close()


def kafka_event_ids(kafka: KafkaSettings, *topics: str) -> Counter[str]:
    """How many records on ``topics`` carry each event id, read from the start to the end."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=None, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for topic in topics for p in range(kafka.topics.partitions)]
    ids: Counter[str] = Counter()
    try:
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + TIMEOUT_S
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"timed out reading {topics}"
            for records in consumer.poll(timeout_ms=500).values():
                ids.update(decode_event(r.value).event_id for r in records)
    finally:
        consumer.close()
    return ids


def shard_ids(db: Path) -> Counter[str]:
    """How many rows of a stopped (or killed) shard's DuckDB file carry each event id, interactions and feedback."""
    with duckdb.connect(str(db), read_only=True) as con:  # a killed shard's own log is replayed in memory
        rows = con.execute("SELECT event_id FROM interactions UNION ALL SELECT event_id FROM feedback").fetchall()
    return Counter(r[0] for r in rows)


def lake_copies(lake: Path) -> dict[str, Counter[str]]:
    """Per shard, how many rows of its raw lake files carry each event id, interactions and feedback."""
    files = [f"{lake}/raw/{table}/day=*/*.parquet" for table in ("interactions", "feedback")]
    sql = "SELECT filename, event_id FROM read_parquet(?, filename = true, union_by_name = true)"
    with duckdb.connect() as con:
        rows = con.execute(sql, [files]).fetchall()
    copies: dict[str, Counter[str]] = {}
    for name, event_id in rows:  # part-<shard>-<since>-<i>.parquet
        copies.setdefault(Path(name).name.split("-")[1], Counter())[event_id] += 1
    return copies


def views(lake: Path) -> tuple[Counter[str], Counter[str], set[str]]:
    """Served interactions per user and rows per feedback id in the analyst views, and every event id there."""
    con = sandbox_connection(lake, admin=True, memory_limit="256MB")
    try:
        users = Counter(r[0] for r in con.sql("SELECT unit_id FROM interactions_raw WHERE role = 'served'").fetchall())
        feedback = Counter(r[0] for r in con.sql("SELECT feedback_id FROM feedback_raw").fetchall())
        sql = "SELECT event_id FROM interactions_raw UNION ALL SELECT event_id FROM feedback_raw"
        ids = {r[0] for r in con.sql(sql).fetchall()}
    finally:
        con.close()
    return users, feedback, ids


def proxy_reports(records: list[logging.LogRecord], gateways: dict[str, Service]) -> Counter[str]:
    """The proxy's log counted by gateway and outcome: "<name> refused" (tried on the next), "<name> failed"."""
    seen: Counter[str] = Counter()
    for message in (record.getMessage() for record in records):
        outcome = "refused" if REFUSED in message else "failed" if any(p in message for p in PROXY_FAILURES) else ""
        for name, gateway in gateways.items():
            if outcome and re.match(rf"upstream {re.escape(gateway.url)}[/ ]", message):
                seen[f"{name} {outcome}"] += 1
    return seen


def enter_together(stack: ExitStack, managers: dict[str, AbstractContextManager[T]]) -> dict[str, T]:
    """Enter context managers at once, each in a thread of its own; ``stack`` exits each one that entered."""
    with ThreadPoolExecutor(len(managers)) as pool:
        futures = {name: pool.submit(manager.__enter__) for name, manager in managers.items()}
    for name, future in futures.items():
        if future.exception() is None:
            stack.push(managers[name])
    return {name: future.result() for name, future in futures.items()}  # raises the first failure


@dataclass
class Rig:
    """What the scenario runs on; leaving ``rig`` stops all of it."""

    stack: ExitStack
    cluster: Cluster
    kafka: KafkaSettings
    key: str  # a user's API key
    envs: dict[str, dict[str, str]]  # each gateway's settings
    gateways: dict[str, Service]
    shards: dict[str, ShardProcess]
    proxy: str  # its URL


@contextmanager
def rig(tmp_path: Path, serve_app: ServeApp) -> Iterator[Rig]:
    """The cluster with this test's topics and keys, two sink shards, two gateways and the proxy in front."""
    with ExitStack() as stack:
        cluster = stack.enter_context(running_cluster(tmp_path / "kafka"))
        kafka = cluster_settings(cluster, partitions=2)  # shards hold one partition of each data topic apiece
        ensure_topics(kafka)
        key = publish_keys(kafka)["user"]
        sinks, lake = tmp_path / "sinks", tmp_path / "lake"
        shards = {name: stack.enter_context(sink_shard(kafka, sinks, name, lake, **SINK)) for name in "ab"}
        envs = {name: gateway_env(kafka, tmp_path / name) for name in "ab"}
        gateways = enter_together(stack, {n: service_process("gateway", tmp_path / n, e) for n, e in envs.items()})
        for gateway in gateways.values():
            ready(gateway)
        partitions_of(kafka, *shards.values())
        upstreams = ProxyConfig(upstreams=(gateways["a"].url, gateways["b"].url))
        proxy = stack.enter_context(serve_app(create_app(upstreams)))
        yield Rig(stack, cluster, kafka, key, envs, gateways, shards, proxy)


def kill_gateway(rig: Rig, traffic: Traffic, workdir: Path) -> tuple[tuple[float, float], int, Service]:
    """SIGKILL gateway b while long answers are under way and restart it at once on its log (on a port of its own).

    Returns when the traffic has gone on for AFTER_S seconds and the new process is up: the times of
    the kill and of the process's end, the events the dead process's log held, and the new process.
    """
    traffic.long_answers.set()
    time.sleep(2.0)  # the short answers under way end
    wait_until(lambda: traffic.chats_in_flight >= CLIENTS - 1, TIMEOUT_S, "long answers in flight")
    killed_at = time.monotonic()
    os.kill(rig.gateways["b"].pid, signal.SIGKILL)
    # until the process has ended, its listening socket still takes connections, which then fail
    wait_until(lambda: process_ended(rig.gateways["b"].pid), 10, "gateway b to end")
    dead_at = time.monotonic()
    traffic.long_answers.clear()
    replayed = logged_events(Path(rig.envs["b"]["FLYWHEEL_GATEWAY__WAL__DIR"]))
    workdir.mkdir()
    with ThreadPoolExecutor(1) as pool:
        restarting = pool.submit(rig.stack.enter_context, service_process("gateway", workdir, rig.envs["b"]))
        time.sleep(max(0.0, killed_at + AFTER_S - time.monotonic()))
        traffic.stop()
        return (killed_at, dead_at), replayed, restarting.result()


def recover(rig: Rig, restarted: Service, lake: Path) -> None:
    """Drain both gateways' logs and the sinks; bring back the killed shard on its file, then stop both shards."""
    wait_until(lambda: drained(rig.gateways["a"]) and drained(restarted), TIMEOUT_S, "both logs to drain")
    ends = rig.stack.enter_context(closing(EndOffsets(rig.kafka)))
    wait_until(lambda: all_committed(rig.kafka, ends), TIMEOUT_S, "the group's commit at the end of every partition")
    with sink_shard(rig.kafka, rig.shards["a"].db.parent, "a", lake, **SINK) as back:  # exports what it held
        partitions_of(rig.kafka, back, rig.shards["b"])
        assert back.stop(signal.SIGTERM) == 0
    assert rig.shards["b"].stop(signal.SIGTERM) == 0


def test_broker_sink_and_gateway_killed_under_traffic_lose_and_double_nothing(
    model_dir: Path, serve_app: ServeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, lake, sinks = Clock(), tmp_path / "lake", tmp_path / "sinks"
    with rig(tmp_path, serve_app) as r:
        clock.lap("setup")
        traffic = Traffic(r.proxy, r.key, CLIENTS)
        r.stack.callback(traffic.stop)
        time.sleep(WARM_S)
        clock.lap("warm-up")

        r.cluster.node("kill-node", KILLED_NODE)  # 1. a broker
        time.sleep(OUTAGE_S)
        clock.lap("broker down")
        r.cluster.node("start-node", KILLED_NODE)
        wait_until(lambda: in_sync(r.cluster, r.kafka), TIMEOUT_S, "the restarted node's replicas to be in sync")
        clock.lap("broker back in sync")

        assert r.shards["a"].stop(signal.SIGKILL) == -signal.SIGKILL  # 2. a sink
        killed_shard = shard_ids(r.shards["a"].db)
        partitions_of(r.kafka, r.shards["b"])
        clock.lap("sink handover")

        killing, replayed, restarted = kill_gateway(r, traffic, tmp_path / "b-restarted")  # 3. a gateway
        clock.lap("gateway b dead")
        recover(r, restarted, lake)
        clock.lap("recovery")
        on_kafka = kafka_event_ids(r.kafka, r.kafka.topics.interactions, r.kafka.topics.feedback)
        proxy_saw = proxy_reports(caplog.records, r.gateways)

    failed = [o for o in traffic.outcomes if o.failure is not None]
    answered = {o.ident for o in traffic.outcomes if o.kind == "chat" and o.failure is None}
    accepted = {o.ident for o in traffic.outcomes if o.kind == "feedback" and o.failure is None}
    users, feedback, in_views = views(lake)
    files = lake_copies(lake)
    in_both_shards = set(files["a"]) & set(files["b"])
    stored = {name: shard_ids(sinks / f"{name}.duckdb") for name in "ab"}
    sent = Counter(o.kind for o in traffic.outcomes)
    print(
        f"\ncluster faults: outage {OUTAGE_S:.0f} s, {CLIENTS} clients; chat sent {sent['chat']} ok {len(answered)}, "
        f"feedback sent {sent['feedback']} ok {len(accepted)}; failed {len(failed)}, all in flight at the killed "
        f"gateway: {[(o.kind, o.failure) for o in failed]}; the proxy sent {proxy_saw['b refused']} to gateway a "
        f"after gateway b's port refused; the dead gateway's log held {replayed} events; in the views "
        f"{sum(users.values())} interactions, {sum(feedback.values())} feedback; shard files a "
        f"{sum(stored['a'].values())} rows, b {sum(stored['b'].values())}; copies: on Kafka "
        f"{sum(on_kafka.values()) - len(on_kafka)} of {sum(on_kafka.values())} records, in the lake "
        f"{len(in_both_shards)} in both shards' files (the killed shard held {len(killed_shard)}), in the views "
        f"{sum(users.values()) - len(users) + sum(feedback.values()) - len(feedback)}; phases "
        + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in clock.spent.items())
    )

    # Failures: only requests in flight at gateway b when it died, each reported by the proxy against b;
    # every request after that which the proxy first tried on b went to a.
    killed_at, dead_at = killing
    assert all(o.started < dead_at and killed_at < o.ended and o.failure in IN_FLIGHT for o in failed), (
        f"killed at {killed_at:.3f}, dead at {dead_at:.3f}: {failed}"
    )
    assert len(failed) <= CLIENTS
    assert (proxy_saw["b failed"], proxy_saw["a failed"], proxy_saw["a refused"]) == (len(failed), 0, 0)
    assert proxy_saw["b refused"] > 0

    # The views: every answered request's interaction and every accepted feedback once, nothing else
    # but what a failed request may have logged; exactly the events on Kafka.
    lost = {o.ident for o in failed}
    assert set(users.values()) == set(feedback.values()) == {1}
    assert answered <= set(users) <= answered | lost
    assert accepted <= set(feedback) <= accepted | lost
    assert in_views == set(on_kafka)

    # Raw copies: none inside a shard's file or a shard's lake files; across shards only events the
    # killed shard had stored, which the survivor wrote again. The restarted shard stored nothing new.
    assert all(set(counts.values()) == {1} for counts in [*stored.values(), *files.values()])
    assert stored["a"] == killed_shard
    assert in_both_shards <= set(killed_shard)
    assert set(files["a"]) | set(files["b"]) == in_views
