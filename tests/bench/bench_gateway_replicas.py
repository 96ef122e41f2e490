"""Requests/s through one gateway against two gateway replicas behind the round-robin proxy.

Light requests (``BENCH_REPLICAS_MAX_TOKENS``, default 2 tokens: mostly the prompt's forward pass,
the API, the events and the proxy, little decoding) from a closed loop of ``BENCH_REPLICAS_CLIENTS``
(32) clients for ``BENCH_REPLICAS_S`` (30) seconds each, one in four streamed
(tests/bench/load_client.py), on the default model with the transformers backend, a real local
broker taking every event. The same load, in one run, against:

1. one gateway, direct (torch threads: every core);
2. the same gateway behind a ``flywheel proxy`` process (what the proxy costs);
3. two gateways behind the proxy (torch threads: half the cores each).

**The 2-core limit.** On this machine one gateway already keeps both cores busy with its batched
forward passes, so a second replica has no core of its own to add: the broker, the proxy and this
client share the same two cores. The ratio printed here says what replicas cost or give on two
cores; replicas add throughput where each gets cores (or a GPU) of its own. The run exits non-zero
only when a request fails (a 5xx, another 4xx, no answer, a broken stream), never on timings.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: api_keys, pipeline_events

from bench_load import make_key, print_header, print_phase
from load_client import Phase, closed_loop
from local_kafka import fresh_topics, local_broker
from replicas import gateway_replicas, machine, proxy
from rss_trend import rss_mib

from services.cli.processes import Service

SECONDS = float(os.environ.get("BENCH_REPLICAS_S", "30"))  # each configuration's closed loop, seconds
CLIENTS = int(os.environ.get("BENCH_REPLICAS_CLIENTS", "32"))  # concurrent clients, the same for every configuration
MAX_TOKENS = int(os.environ.get("BENCH_REPLICAS_MAX_TOKENS", "2"))  # tokens per answer: a light backend
WARMUP_REQUESTS = 8  # per configuration, before measuring: first requests pay one-time costs
CORES = os.cpu_count() or 1


def run(name: str, url: str, key: str, gateways: list[Service]) -> Phase:
    """A warm-up, then the measured closed loop against ``url``; prints its row (RSS: the gateways' sum)."""
    asyncio.run(closed_loop(url, key, WARMUP_REQUESTS, 0.1, MAX_TOKENS))
    phase = asyncio.run(closed_loop(url, key, CLIENTS, SECONDS, MAX_TOKENS))
    phase = Phase(name, 0.0, phase.seconds, phase.outcomes)
    print_phase(phase, sum(rss_mib(gateway.pid) for gateway in gateways))
    return phase


def main() -> None:
    print(machine())
    print(f"closed loop: {CLIENTS} clients, {SECONDS:g} s each, max_tokens {MAX_TOKENS}, one request in four streamed")
    phases = []
    with local_broker() as broker_kafka, tempfile.TemporaryDirectory() as tmp:
        kafka, workdir = fresh_topics(broker_kafka), Path(tmp)
        key = make_key(kafka, "bench-replicas", "user")
        half = max(1, CORES // 2)
        print(f"  1 gateway: {CORES} torch threads; 2 gateways: {half} each; RSS: the gateways' together")
        print_header()
        with gateway_replicas(kafka, workdir / "one", 1, threads=CORES) as one:
            phases.append(run("1 gateway, direct", one[0].url, key, one))
            with proxy(workdir / "one", one) as front:
                phases.append(run("1 gateway, proxy", front.url, key, one))
        with gateway_replicas(kafka, workdir / "two", 2, threads=half) as two, proxy(workdir / "two", two) as front:
            phases.append(run("2 gateways, proxy", front.url, key, two))
    direct, proxied, replicated = (phase.served_per_s() for phase in phases)
    print(f"  2 gateways behind the proxy / 1 gateway direct:       {replicated / direct:.2f}")
    print(f"  2 gateways behind the proxy / 1 gateway behind it:    {replicated / proxied:.2f}")
    print(f"  1 gateway behind the proxy / 1 gateway direct:        {proxied / direct:.2f}")
    print(f"  ({CORES} cores shared by the broker, the gateways, the proxy and this client; see the docstring)")
    failures = sum(len(phase.failures) for phase in phases)
    if failures:
        raise SystemExit(f"replicas: {failures} failed requests")


if __name__ == "__main__":
    main()
