"""Load and soak: the gateway at the highest rate it sustains, at three times that, then for a long while.

The targets: 60 s at the highest request rate the default model sustains on 2 cores, then at 3x
that: zero 5xx, every excess request a 429, and every served request's event present in DuckDB
afterwards; a 10-minute soak whose memory (RSS) trend after warm-up is flat.

Everything runs as in production: a local Kafka broker (topics of this run's own), a ``flywheel
worker`` process (the sink into a DuckDB file, the lake export and the rollups; the refresh schedule
off, so no training competes for the cores) and a ``flywheel gateway`` process on the default model
with the default serving settings, reading its API keys from the keys topic. Gateway and worker
are processes of their own so that each one's RSS is its own (``VmRSS`` in ``/proc/<pid>/status``);
this process only sends requests and checks the answers (tests/bench/load_client.py: short
questions, greedy, 16 tokens, a user of their own, one in four streamed).

1. Calibration, on a gateway whose per-key limits are out of the way. A closed loop of 16 clients
   (the batch size) for ``BENCH_CALIBRATION_S`` (20) seconds gives the capacity X and the
   latency L of a full batch. Closed-loop throughput is not a sustainable open-loop rate (arrivals
   at X keep the queue growing), so open-loop rates of 0.9X, 0.8X, ... 0.5X follow, as long
   each: R is the first the gateway keeps up with: every request served, the p99 under 2L (a full
   batch running and at most one more waiting), and the requests of the last third not slower
   than 1.5 times those of the first (a queue still growing). ``BENCH_LOAD_RATE=<requests/s>``
   skips the calibration.
2. Load, ``BENCH_LOAD_S`` (60) seconds a phase, open-loop arrivals at fixed intervals (clients
   that do not wait for answers, as users do not), on a fresh gateway whose per-key limits admit
   one key at R (``rate_per_s`` R, ``burst`` one second of it, ``max_in_flight`` 32, twice the
   batch: R times the 2L bound is less):
   A. one key at R;
   B. one key at 3R: its token bucket must refuse the excess (429 ``rate_limit_exceeded``);
   C. 3R spread over 6 keys, each well under its limits: the gateway's own bound on requests
      waiting for the model (``gateway.max_queued_requests``) must refuse the excess (429).
   Each answer is a 200, a 429 by cause (rate, in flight, queue), a 5xx, another 4xx, or none
   (a timeout or a reset: a failure, not a refusal). Served/s counts the answers from the first
   request to the last answer, so the requests a queue holds at the end do not count as speed.
3. Events: every served answer's interaction id (the ``X-Interaction-Id`` header's raw id, also
   the body's ``chatcmpl-<id>``) must be stored in DuckDB as a served response; the worker's
   ``/v1/interactions`` is asked for them until all came or ``EVENTS_TIMEOUT_S`` passed.
4. Soak, ``BENCH_SOAK_S`` (600) seconds at 0.8R on one key, on the same gateway: its RSS and the
   worker's every 5 s. After the warm-up (the first 20%), the least-squares slope of RSS (MiB) over
   time (minutes) with its 95% interval, the change over that window and the slope per served
   request; flat when the interval holds 0 or the slope is under 0.1 MiB/min (tests/bench/rss_trend.py
   says why). Ten minutes cannot tell a slow leak from allocator arenas still settling, so the
   numbers are printed whatever the verdict.

The run exits non-zero only when a correctness property fails (a 5xx, another 4xx, no answer, a
broken stream, a 429 without Retry-After, an event missing from DuckDB), never on timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: api_keys, pipeline_events

from api_keys import kafka_env
from load_client import MAX_TOKENS, Phase, closed_loop, open_loop
from local_kafka import fresh_topics, local_broker
from pipeline_events import wait_until
from rss_trend import Trend, print_trend, rss_mib, rss_trend

from feedback.apikeys import new_key, publish_key
from feedback.settings import GatewaySettings, KafkaSettings
from services.cli.credentials import bearer
from services.cli.processes import Service, service_process

LOAD_S = float(os.environ.get("BENCH_LOAD_S", "60"))  # each load phase, seconds
SOAK_S = float(os.environ.get("BENCH_SOAK_S", "600"))  # the soak, seconds
CALIBRATION_S = float(os.environ.get("BENCH_CALIBRATION_S", "20"))  # each calibration step, seconds
FIXED_RATE = os.environ.get("BENCH_LOAD_RATE")  # requests/s; set, it replaces the calibration
STEPS = (0.9, 0.8, 0.7, 0.6, 0.5)  # calibration: open-loop rates tried, as shares of the closed-loop capacity
OVERLOAD = 3.0  # phases B and C offer this many times R
SPREAD_KEYS = 6  # phase C's keys: each sends 3R/6 = R/2, under its own limit
SOAK_SHARE = 0.8  # the soak's rate, a share of R
SAMPLE_S = 5.0  # RSS sampled this often during the soak, seconds
WARMUP_SHARE = 0.2  # the soak's first fifth is left out of the trend
EVENTS_TIMEOUT_S = 180.0  # longest wait for the served events to reach DuckDB, seconds
IDS_PER_CALL = 200  # interaction ids per /v1/interactions call: the URL stays under uvicorn's 16 KiB
BATCH = GatewaySettings().max_batch_size
KINDS = {"200": "200", "429 key rate": "429 rate", "429 key in flight": "429 conc", "429 overloaded": "429 queue"}
KINDS |= {"5xx": "5xx", "other 4xx": "4xx", "no answer": "no ans", "broken 200": "broken"}


def service_env(kafka: KafkaSettings, workdir: Path, **limits: float) -> dict[str, str]:
    """The worker's and the gateway's settings as environment: this run's topics and files, the per-key limits."""
    env = os.environ | kafka_env(kafka)
    env |= {
        "HF_HUB_OFFLINE": "1",
        "FLYWHEEL_KAFKA__CONSUMER_GROUP": kafka.consumer_group,
        "FLYWHEEL_DUCKDB__PATH": str(workdir / "flywheel.duckdb"),
        "FLYWHEEL_GATEWAY__WAL__DIR": str(workdir / "wal"),
        "FLYWHEEL_MODEL__REGISTRY_DIR": str(workdir / "registry"),
        "FLYWHEEL_REFRESH__WORK_DIR": str(workdir / "refreshes"),
        "FLYWHEEL_WORKER__LAKE_DIR": str(workdir / "lake"),
        "FLYWHEEL_SCHEDULER__ENABLED": "false",
    }
    return env | {f"FLYWHEEL_GATEWAY__LIMITS__{name.upper()}": str(value) for name, value in limits.items()}


def make_key(kafka: KafkaSettings, name: str, role: Literal["admin", "user"]) -> str:
    """A key on the run's keys topic, published before the services start; its text."""
    text, record = new_key(name, role, created_by="bench")
    publish_key(kafka, record)
    return text


@contextmanager
def gateway(kafka: KafkaSettings, workdir: Path, key: str, **limits: float) -> Iterator[Service]:
    """A gateway process with these per-key limits, ready (keys read) and warmed up."""
    with service_process("gateway", workdir, service_env(kafka, workdir, **limits)) as service:
        wait_until(lambda: is_ready(service.url), timeout=120, what="the gateway to read its keys")
        asyncio.run(open_loop("warm-up", service.url, [key], 1.0, 4))  # first requests pay one-time costs
        yield service


def is_ready(url: str) -> bool:
    """Whether the gateway at ``url`` read its deployment state and keys and can serve."""
    return httpx.get(f"{url}/readyz", timeout=5).status_code == 200


def calibrate(kafka: KafkaSettings, workdir: Path, key: str) -> float:
    """R: the highest open-loop rate of ``STEPS`` the gateway keeps up with (:func:`keeps_up`)."""
    with gateway(kafka, workdir, key, rate_per_s=1e6, burst=1_000_000, max_in_flight=100_000) as service:
        full = asyncio.run(closed_loop(service.url, key, BATCH, CALIBRATION_S))
        capacity, batch_latency = full.served_per_s(), full.latency()[0]
        print(f"calibration: {full.name}, {len(full.outcomes)} requests in {full.seconds:.1f} s")
        print(f"  capacity X = {capacity:.2f} served/s, full-batch latency L = {batch_latency:.2f} s (p50)")
        for share in STEPS:
            step = asyncio.run(open_loop(f"{share}X", service.url, [key], share * capacity, CALIBRATION_S))
            held = keeps_up(step, batch_latency)
            print(
                f"  open loop {share:.1f}X = {step.rate:5.2f}/s: served {len(step.served)}/{len(step.outcomes)},"
                f" p99 {step.latency()[1]:.2f} s (bound 2L {2 * batch_latency:.2f} s), p50 of the first and last"
                f" third {step.latency(thirds(step)[0])[0]:.2f} and {step.latency(thirds(step)[1])[0]:.2f} s:"
                f" {'held' if held else 'not held'}"
            )
            if held:
                return step.rate
    print(f"  no step held; R is the lowest, {STEPS[-1]}X")
    return STEPS[-1] * capacity


def thirds(phase: Phase) -> tuple[slice, slice]:
    """The first and the last third of a phase's requests, in the order they were sent."""
    third = len(phase.outcomes) // 3
    return slice(None, third), slice(len(phase.outcomes) - third, None)


def keeps_up(step: Phase, batch_latency: float) -> bool:
    """Every request served, p99 under twice a full batch's latency, and no queue still growing at the end
    (the last third's p50 at most 1.5 times the first third's)."""
    first, last = (step.latency(part)[0] for part in thirds(step))
    return len(step.served) == len(step.outcomes) and step.latency()[1] <= 2 * batch_latency and last <= 1.5 * first


def print_header() -> None:
    """The phase table's header."""
    columns = "".join(f"{label:>10}" for label in KINDS.values())
    print(f"  {'phase':<20}{'offered':>8}{'sent':>6}{columns}{'served/s':>9}{'p50 s':>7}{'p99 s':>7}{'RSS MiB':>8}")


def print_phase(phase: Phase, rss: float) -> None:
    """One table row, then the first few failures, if any."""
    counts = phase.counts()
    cells = "".join(f"{counts.get(kind, 0):>10}" for kind in KINDS)
    p50, p99 = phase.latency()
    print(
        f"  {phase.name:<20}{phase.rate:>8.2f}{len(phase.outcomes):>6}{cells}"
        f"{phase.served_per_s():>9.2f}{p50:>7.2f}{p99:>7.2f}{rss:>8.0f}"
    )
    for outcome in phase.failures[:5]:
        print(f"    failure: {outcome.kind} after {outcome.seconds:.1f} s: {outcome.failure}")


def load_phases(url: str, pid: int, keys: list[str], rate: float) -> list[Phase]:
    """Phases A (R, one key), B (3R, one key) and C (3R over several keys), each ``LOAD_S`` long."""
    plan = [
        ("A: R, one key", keys[:1], rate),
        (f"B: {OVERLOAD:g}R, one key", keys[:1], OVERLOAD * rate),
        (f"C: {OVERLOAD:g}R, {len(keys)} keys", keys, OVERLOAD * rate),
    ]
    print(f"load: {LOAD_S:.0f} s a phase, R = {rate:.2f} requests/s, max_tokens {MAX_TOKENS}")
    print("  (429 rate, conc: the key's rate or requests in flight; queue: the gateway's; RSS: the gateway's after)")
    print_header()
    phases = []
    for name, phase_keys, phase_rate in plan:
        phases.append(asyncio.run(open_loop(name, url, phase_keys, phase_rate, LOAD_S)))
        print_phase(phases[-1], rss_mib(pid))
    base = phases[0].served_per_s()
    for phase in phases[1:]:
        ratio = phase.served_per_s() / base if base else float("nan")
        print(f"  served/s, {phase.name[:1]} / A = {ratio:.2f}")
    return phases


def stored_served(worker: Service, admin: str, ids: list[str]) -> set[str]:
    """Which of ``ids`` DuckDB holds as served responses, asked through the worker."""
    found: set[str] = set()
    for start in range(0, len(ids), IDS_PER_CALL):
        params: dict[str, list[str] | int] = {"interaction_id": ids[start : start + IDS_PER_CALL], "limit": 1000}
        response = httpx.get(f"{worker.url}/v1/interactions", params=params, headers=bearer(admin), timeout=60)
        response.raise_for_status()
        found |= {row["interaction_id"] for row in response.json() if row["role"] == "served"}
    return found


@dataclass(frozen=True)
class Events:
    """Which served answers' events reached DuckDB."""

    what: str
    served: int
    missing: list[str]  # raw interaction ids
    waited_s: float


def check_events(worker: Service, admin: str, what: str, phases: list[Phase]) -> Events:
    """The served answers of ``phases`` whose event is not in DuckDB after a bounded wait."""
    served = {o.served_id for phase in phases for o in phase.served if o.served_id}
    missing, start = set(served), time.monotonic()
    while missing and time.monotonic() - start < EVENTS_TIMEOUT_S:
        missing -= stored_served(worker, admin, sorted(missing))
        if missing:
            time.sleep(1)
    events = Events(what, len(served), sorted(missing), time.monotonic() - start)
    print(
        f"events, {what}: {len(served) - len(missing)}/{len(served)} served answers in DuckDB"
        f" after {events.waited_s:.1f} s"
    )
    if missing:
        print(f"  missing: {', '.join(events.missing[:20])}{' ...' if len(missing) > 20 else ''}")
    return events


async def soak_traffic(url: str, key: str, rate: float, pids: list[int]) -> tuple[Phase, list[list[float]]]:
    """``SOAK_S`` seconds at ``rate`` while each process's RSS is sampled; the phase and rows [t, rss...]."""
    samples: list[list[float]] = []

    async def sample() -> None:
        start = time.monotonic()
        while True:
            samples.append([time.monotonic() - start, *(rss_mib(pid) for pid in pids)])
            await asyncio.sleep(SAMPLE_S)

    sampler = asyncio.create_task(sample())
    phase = await open_loop(f"soak: {SOAK_SHARE:g}R", url, [key], rate, SOAK_S)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    return phase, samples


def soak(gateway_service: Service, worker: Service, key: str, rate: float) -> tuple[Phase, list[Trend]]:
    """The soak: its traffic, then each process's RSS trend after the warm-up."""
    print(f"soak: {SOAK_S:.0f} s at {SOAK_SHARE * rate:.2f} requests/s, RSS every {SAMPLE_S:g} s")
    pids = {"gateway": gateway_service.pid, "worker": worker.pid}
    phase, samples = asyncio.run(soak_traffic(gateway_service.url, key, SOAK_SHARE * rate, list(pids.values())))
    print_header()
    print_phase(phase, samples[-1][1])
    trends = []
    for column, process in enumerate(pids, start=1):
        series = [row[column] for row in samples]
        every_minute = series[:: max(1, round(60 / SAMPLE_S))]
        print(f"  {process} RSS by minute, MiB: {' '.join(f'{m:.0f}' for m in every_minute)}")
        trends.append(rss_trend(process, [row[0] for row in samples], series, WARMUP_SHARE * SOAK_S))
        print_trend(trends[-1], len(phase.served) / (phase.seconds / 60))
    return phase, trends


def served_line(phase: Phase, base: Phase) -> str:
    """Served/s, its ratio to phase A's, and the served p99."""
    ratio = phase.served_per_s() / base.served_per_s() if base.served_per_s() else math.nan
    return f"{phase.served_per_s():.2f} ({ratio:.2f} of A's), p99 {phase.latency()[1]:.2f} s"


def summary(rate: float, phases: list[Phase], checks: list[Events], trends: list[Trend]) -> None:
    """The closing table; exits non-zero when a correctness property failed."""
    failures = [o for phase in phases for o in phase.failures]
    missing = [raw_id for check in checks for raw_id in check.missing]
    kinds = {kind: sum(1 for o in failures if o.kind == kind) for kind in ("5xx", "other 4xx", "no answer")}
    rows = [
        ("R, the sustainable rate", f"{rate:.2f} requests/s ({'given' if FIXED_RATE else 'calibrated'})"),
        *((f"served/s, {p.name}", served_line(p, phases[0])) for p in phases),
        *((kind, str(count)) for kind, count in kinds.items()),
        ("429 without Retry-After, broken 200s", str(len(failures) - sum(kinds.values()))),
        *(
            (
                f"served events in DuckDB, {c.what}",
                f"{c.served - len(c.missing)}/{c.served} (waited {c.waited_s:.1f} s)",
            )
            for c in checks
        ),
        *(
            (
                f"{t.process} RSS slope after warm-up",
                t.error or f"{t.slope:+.3f} MiB/min, {t.verdict}",
            )
            for t in trends
        ),
    ]
    print("summary:")
    for label, value in rows:
        print(f"  {label:<40} {value}")
    problems = [f"{len(failures)} failed requests"] if failures else []
    problems += [f"{len(missing)} served events missing from DuckDB"] if missing else []
    if problems:
        raise SystemExit(f"load: {'; '.join(problems)}")


def main() -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load average {load}")
    with local_broker() as broker_kafka, tempfile.TemporaryDirectory() as tmp:
        kafka, workdir = fresh_topics(broker_kafka), Path(tmp)
        keys = [make_key(kafka, f"bench-load-{n}", "user") for n in range(SPREAD_KEYS)]
        admin = make_key(kafka, "bench-load-admin", "admin")
        with service_process("worker", workdir, service_env(kafka, workdir)) as worker:
            rate = float(FIXED_RATE) if FIXED_RATE else calibrate(kafka, workdir, keys[0])
            limits = {"rate_per_s": rate, "burst": max(1, math.ceil(rate)), "max_in_flight": 2 * BATCH}
            with gateway(kafka, workdir, keys[0], **limits) as service:
                phases = load_phases(service.url, service.pid, keys, rate)
                checks = [check_events(worker, admin, "load", phases)]
                soak_phase, trends = soak(service, worker, keys[0], rate)
                checks.append(check_events(worker, admin, "soak", [soak_phase]))
    summary(rate, [*phases, soak_phase], checks, trends)


if __name__ == "__main__":
    main()
