"""The gateway's own CPU cost per request: requests/s through one gateway whose backend answers at once.

What the gateway does around generation (HTTP, validation, keys and limits, routing, the content
filter on the prompt and the answer, events into the write-ahead log, metrics, audit) runs on one
event loop in one process. On a GPU that cost, not the engine, caps the requests/s one gateway
serves. Here the backend is a fake that answers at once (``gateway_fakes.FakeBackend``, 3 tokens),
so only the gateway is measured. Kafka is unreachable (events wait in the write-ahead log), as in
the other serving benchmarks.

Sides, in the same run, alternating, after a warm-up, ``BENCH_REPEATS`` (default 3) runs each:
the content filter with its learned classifier turned on; the shipped settings (term list and the
offensive-language classifier); the shipped settings on uvicorn's pure-Python HTTP parser and event
loop (h11 and asyncio's, what the gateway ran on before httptools and uvloop were installed); the term
list alone; the content filter off.
``BENCH_OVERHEAD_REQUESTS`` (default 1,000) requests per run from 32 concurrent clients in 2
processes of their own, one in four streamed. Prints each side's median requests/s, milliseconds per
request (its inverse), and its ratio to the filter off.

    PYTHONPATH=tests python tests/bench/bench_gateway_overhead.py
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
from bench_serving import KEY, serve
from replicas import machine

sys.path.insert(0, str(Path(__file__).parents[1] / "services" / "gateway"))
from gateway_fakes import FakeBackend

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
REQUESTS = int(os.environ.get("BENCH_OVERHEAD_REQUESTS", "1000"))
CLIENTS, PROCESSES = 32, 2
PURE_PYTHON = {"http": "h11", "loop": "asyncio"}  # uvicorn without httptools and uvloop
# side: (content filter settings, uvicorn settings)
SIDES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "with learned classifier": ({"learned": True}, {}),
    "shipped": ({}, {}),
    "shipped, h11 + asyncio": ({}, PURE_PYTHON),
    "term list alone": ({"classifier": False}, {}),
    "filter off": ({"enabled": False}, {}),
}


def client(url: str, key: str, first: int, n: int, clients: int) -> None:
    """``clients`` concurrent clients sending requests ``first`` .. ``first + n - 1``; any failure raises."""
    asyncio.run(_client(url, key, list(range(first, first + n)), clients))


async def _client(url: str, key: str, numbers: list[int], clients: int) -> None:
    async def loop(http: httpx.AsyncClient) -> None:
        while numbers:
            i = numbers.pop()
            message = {"role": "user", "content": f"Explain why sleep matters to a student. (question {i})"}
            body = {"model": "flywheel", "messages": [message], "max_tokens": 16, "user": f"u{i}", "stream": i % 4 == 1}
            response = await http.post(f"{url}/v1/chat/completions", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"request {i}: {response.status_code} {response.text[:200]}")

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        await asyncio.gather(*(loop(http) for _ in range(clients)))


def requests_per_s(pool: ProcessPoolExecutor, url: str, n: int) -> float:
    """Requests/s of ``n`` requests from CLIENTS clients spread over PROCESSES processes."""
    share = n // PROCESSES
    start = time.perf_counter()
    futures = [pool.submit(client, url, KEY, p * share, share, CLIENTS // PROCESSES) for p in range(PROCESSES)]
    for future in futures:
        future.result()
    return share * PROCESSES / (time.perf_counter() - start)


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # the unreachable Kafka is on purpose
    print(machine())
    print(f"gateway overhead: an instant backend, {REQUESTS} requests per run, {CLIENTS} clients, {REPEATS} runs")
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    backend = FakeBackend(base="smollm2-135m-instruct")
    backend.context_length = 10_000
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(PROCESSES, mp_context=get_context("spawn")) as pool:
        for repeat in range(REPEATS + 1):  # the first round warms up
            for side, (content_filter, server) in SIDES.items():
                workdir = Path(tmp) / f"{side}-{repeat}"
                with serve(lambda _: backend, workdir, content_filter, server, max_queued_requests=4096) as (url, _):
                    requests_per_s(pool, url, 64)  # this gateway's warm-up
                    rate = requests_per_s(pool, url, REQUESTS)
                if repeat:
                    rates[side].append(rate)
    off = statistics.median(rates["filter off"])
    print(f"  {'side':<24} {'requests/s':>10} {'ms each':>8} {'/ filter off':>12}")
    for side, values in rates.items():
        median = statistics.median(values)
        print(f"  {side:<24} {median:>10.1f} {1000 / median:>8.2f} {median / off:>12.2f}")
    gain = statistics.median(rates["shipped"]) / statistics.median(rates["shipped, h11 + asyncio"])
    print(f"  httptools + uvloop against h11 + asyncio, shipped settings: x{gain:.2f}")


if __name__ == "__main__":
    main()
