"""How long a deployment change takes to reach every gateway replica (target: p99 <= 2 s).

A real local broker (topics of this run's own) and two ``flywheel gateway`` processes on the
default model, sharing an adapter registry that holds one real LoRA adapter. Changes are published
as the worker's decision engine and the admin API publish them (``feedback.deployments.
publish_state``: a producer of its own, ``acks=all``), one after another, each once both replicas
showed the previous one, and both replicas' ``/readyz`` (unaudited, unlike the admin API, so the
polling adds no events) is read every ``POLL_S`` until each shows the change's deployment id and
phase. ``BENCH_PROPAGATION_CHANGES`` (50) changes go round the whole life of a challenger: a new
challenger in shadow (each replica loads the adapter from the registry before it applies the
state, so that time is included), the four A/B ramp steps, a rollback; and again.

Printed: the time from the start of ``publish_state`` to both replicas showing the change (p50,
p99, max; the target), by kind of change, and its two parts: publishing (a new producer, the
broker's acknowledgement) and acknowledgement to both replicas. Everything shares this machine's
cores: the broker, both gateways (one torch thread each, idle but for the polling) and this
process (publishing and polling).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: api_keys, pipeline_events

from bench_load import make_key
from bench_serving import make_challenger
from local_kafka import fresh_topics, local_broker
from replicas import gateway_replicas, machine

from feedback.deployments import DeploymentState, initial_state, publish_state, roll_back, set_challenger, set_mode
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import GatewaySettings, KafkaSettings, ModelSettings

CHANGES = int(os.environ.get("BENCH_PROPAGATION_CHANGES", "50"))  # changes measured
REPLICAS = 2
POLL_S = 0.01  # each replica's deployment is read this often while a change travels, seconds
TARGET_S = 2.0  # a change reaches every replica within this at p99, seconds
GIVE_UP_S = 60.0  # a change not seen by then counts as lost, seconds


def lifecycle(champion: str, challenger: str, count: int) -> Iterator[tuple[str, DeploymentState]]:
    """``count`` changes round a challenger's life: new in shadow, each ramp step, rolled back; again."""
    state = initial_state(champion, GatewaySettings().ramp)
    for _ in range(count):
        if state.challenger is None:
            kind, state = "new challenger", set_challenger(state, challenger, by="bench")
        elif state.mode == "shadow":
            kind, state = "ramp step", set_mode(state, "ab", by="bench", step=0)
        elif state.ramp_step + 1 < len(state.ramp):
            kind, state = "ramp step", set_mode(state, "ab", by="bench", step=state.ramp_step + 1)
        else:
            kind, state = "rollback", roll_back(state, by="bench")
        yield kind, state


async def shown(client: httpx.AsyncClient, url: str, state: DeploymentState, start: float) -> float:
    """Seconds from ``start`` until the replica at ``url`` applies ``state`` (its deployment id and phase)."""
    while time.perf_counter() - start < GIVE_UP_S:
        view = (await client.get(f"{url}/readyz")).json()  # 503 while a base loads; the body still says
        if (view["deployment_id"], view["phase"]) == (state.deployment_id, state.phase):
            return time.perf_counter() - start
        await asyncio.sleep(POLL_S)
    raise SystemExit(f"revision {state.revision} did not reach {url} within {GIVE_UP_S:g} s")


async def propagate(kafka: KafkaSettings, urls: list[str], state: DeploymentState) -> tuple[float, float]:
    """Publish ``state``; seconds to the broker's acknowledgement, and to every replica showing it."""
    async with httpx.AsyncClient(timeout=30) as client:
        start = time.perf_counter()
        await asyncio.to_thread(publish_state, kafka, state)
        acknowledged = time.perf_counter() - start
        seen = await asyncio.gather(*(shown(client, url, state, start) for url in urls))
    return acknowledged, max(seen)


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max (a single value stands for all three)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98], max(values)


def print_row(label: str, values: list[float]) -> None:
    p50, p99, top = quantiles(values)
    print(f"  {label:<42}{len(values):>4}{p50 * 1000:>9.0f}{p99 * 1000:>9.0f}{top * 1000:>9.0f}")


def measure(kafka: KafkaSettings, urls: list[str], challenger: str) -> None:
    """``CHANGES`` changes round a challenger's life, one after another; prints the table and the verdict."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    publishing, travel, total = [], [], []
    for kind, state in lifecycle(challenger.partition("+")[0], challenger, CHANGES):
        acknowledged, reached = asyncio.run(propagate(kafka, urls, state))
        publishing.append(acknowledged)
        travel.append(reached - acknowledged)
        total.append(reached)
        by_kind[kind].append(reached)
    print(f"{CHANGES} changes, {len(urls)} replicas, each polled every {POLL_S * 1000:.0f} ms:")
    print(f"  {'':<42}{'n':>4}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    print_row("publish -> both replicas apply it", total)
    print_row("  publish (new producer, acks=all)", publishing)
    print_row("  acknowledged -> both replicas", travel)
    for kind, values in by_kind.items():
        print_row(f"  {kind} (publish -> both)", values)
    p99 = quantiles(total)[1]
    verdict = "met" if p99 <= TARGET_S else "NOT met"
    print(f"target p99 <= {TARGET_S:g} s: {verdict} (p99 {p99:.3f} s, {p99 / TARGET_S:.2f} of the target)")


def main() -> None:
    print(machine())
    model_dir = prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)
    with local_broker() as broker_kafka, tempfile.TemporaryDirectory() as tmp:
        kafka, workdir = fresh_topics(broker_kafka), Path(tmp)
        make_key(kafka, "bench-propagation-admin", "admin")  # keys topic not empty: as in production
        registry = workdir / "registry"
        challenger = make_challenger(model_dir, registry)
        with gateway_replicas(kafka, workdir, REPLICAS, threads=1, registry=registry) as replicas:
            measure(kafka, [replica.url for replica in replicas], challenger)


if __name__ == "__main__":
    main()
