"""Serving benchmarks: batching, shadow overhead and overload, through the gateway over real HTTP.

The gateway runs in this process under uvicorn on a free port, on the default model, with Kafka
unreachable (events wait in a temporary write-ahead log; serving is what is measured). Each
comparison runs both sides in the same run, after a warm-up, with at least 3 repeats.

1. Batching: 16 concurrent clients (mixed prompt lengths, max_tokens 8..64, greedy) vs raw
   ``model.generate`` on the same 16 requests padded into one batch, and vs 1 client sending
   them one after another. Tokens/s counts each request's own completion tokens on every side.
2. Shadow overhead: 4 concurrent clients; served latency p50/p99 with 100% shadow and with 10%
   shadow sampling vs shadow off; the share of shadow copies completed.
3. Overload: open-loop arrivals at 4x the sustainable request rate (the same requests, 16 at
   once, shadow off); served p99 with shadow on vs off, and how refusals look (429 with
   Retry-After; no timeouts).
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import random
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn
from lora_adapters import random_lora

from feedback import deployments
from feedback.apikeys import KeyBook, new_key
from feedback.model.runtime import ModelRuntime, model_name
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.registry import AdapterRegistry
from feedback.settings import ModelSettings, Settings
from services.cli.ports import free_port
from services.gateway.app import create_app
from services.gateway.backend import InferenceBackend, TransformersBackend

KEY, RECORD = new_key("bench", "user", created_by="bench")  # Kafka is unreachable here: the app starts with it
HEADERS = {"Authorization": f"Bearer {KEY}"}

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))  # at least 3 for reported numbers
TOPICS = ["sleep", "water", "exercise", "reading", "music", "friends", "maths", "history"]
PREAMBLES = ["", "Please be brief. ", "You are a patient teacher who explains things to a curious child. " * 3]


def requests16() -> list[dict[str, Any]]:
    """16 greedy requests, mixed prompt lengths, max_tokens spread over 8..64."""
    rng = random.Random(7)
    out = []
    for i in range(16):
        prompt = f"{PREAMBLES[i % 3]}Explain in a few sentences why {TOPICS[i % 8]} matters."
        out.append({"messages": [{"role": "user", "content": prompt}], "max_tokens": rng.randint(8, 64)})
    return out


def body(request: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "flywheel", "temperature": 0, **request, **extra}


@contextmanager
def gateway(runtime: ModelRuntime, workdir: Path, **gateway_settings: Any) -> Iterator[tuple[str, Any]]:
    """The gateway on the transformers backend over ``runtime``, under uvicorn in this process: (url, app)."""

    def backend(settings: Settings) -> InferenceBackend:
        return TransformersBackend(runtime, settings.gateway, AdapterRegistry(workdir / "registry"))

    with serve(backend, workdir, **gateway_settings) as served:
        yield served


@contextmanager
def serve(
    backend_for: Callable[[Settings], InferenceBackend],
    workdir: Path,
    content_filter: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    **gateway_settings: Any,
) -> Iterator[tuple[str, Any]]:
    """The gateway on the backend ``backend_for`` builds from its settings, Kafka unreachable: (url, app).

    ``content_filter`` overrides the content filter's settings (the shipped filter by default), ``server``
    uvicorn's (its HTTP parser and event loop: ``http``, ``loop``).
    """
    settings = Settings.model_validate(
        {
            "content_filter": content_filter or {},
            "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "bootstrap_timeout_ms": 200},
            "gateway": {
                "wal": {"dir": workdir / f"wal-{time.monotonic_ns()}"},
                "drain_timeout_s": 0,
                # one key sends everything here: per-key limits out of the way, the gateway's own capacity is measured
                "limits": {"rate_per_s": 1e6, "burst": 1_000_000, "max_in_flight": 100_000},
                **gateway_settings,
            },
            "model": {"registry_dir": workdir / "registry"},
        }
    )
    app = create_app(settings, backend=backend_for(settings), keys=KeyBook([RECORD]))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **(server or {})))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the gateway did not start (its error is above)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=60)


async def post(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = await client.post(f"{url}/v1/chat/completions", json=payload)
    return time.perf_counter() - start, response


def tokens_of(responses: list[httpx.Response]) -> int:
    return sum(r.json()["usage"]["completion_tokens"] for r in responses)


async def concurrent(url: str, payloads: list[dict[str, Any]]) -> tuple[float, list[httpx.Response]]:
    async with httpx.AsyncClient(headers=HEADERS, timeout=600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(post(client, url, p) for p in payloads))
        return time.perf_counter() - start, [r for _, r in results]


async def sequential(url: str, payloads: list[dict[str, Any]]) -> tuple[float, list[httpx.Response]]:
    async with httpx.AsyncClient(headers=HEADERS, timeout=600) as client:
        start = time.perf_counter()
        results = [await post(client, url, p) for p in payloads]
        return time.perf_counter() - start, [r for _, r in results]


def raw_generate(runtime: ModelRuntime, requests: list[dict[str, Any]]) -> float:
    """Seconds for plain ``model.generate`` on the 16 prompts padded into one greedy batch."""
    prompts = [runtime.render_prompt(r["messages"]) for r in requests]
    ids, mask = runtime.left_pad(prompts)
    pad = runtime.tokenizer.pad_token_id or 0
    start = time.perf_counter()
    with torch.inference_mode():
        runtime.model.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(r["max_tokens"] for r in requests),
            do_sample=False,
            pad_token_id=pad,
        )
    return time.perf_counter() - start


def bench_batching(runtime: ModelRuntime, workdir: Path) -> None:
    requests = requests16()
    payloads = [body(r) for r in requests]
    with gateway(runtime, workdir) as (url, _):
        asyncio.run(concurrent(url, payloads[:4]))  # warm-up
        raw_s, many_s, one_s, tokens = [], [], [], 0
        for _ in range(REPEATS):
            raw_s.append(raw_generate(runtime, requests))
            seconds, responses = asyncio.run(concurrent(url, payloads))
            many_s.append(seconds)
            tokens = tokens_of(responses)
            one_s.append(asyncio.run(sequential(url, payloads))[0])
    raw, many, one = (tokens / statistics.median(s) for s in (raw_s, many_s, one_s))
    print(f"batching: {tokens} completion tokens per run, median of {REPEATS}")
    print(f"  raw generate (one padded batch)  {raw:8.1f} tok/s")
    print(f"  gateway, 16 concurrent clients   {many:8.1f} tok/s   ratio to raw {many / raw:.2f} (target >= 0.75)")
    print(f"  gateway, 1 client sequential     {one:8.1f} tok/s   16 clients / 1 client {many / one:.2f} (target >= 5)")
    print(f"  bound: raw padded batch / gateway 1 client {raw / one:.2f} (what batching alone buys on this machine)")


def make_challenger(model_dir: Path, registry: Path) -> str:
    """A LoRA challenger (rank 8 on the query and value projections, random weights), registered: its version."""
    out = random_lora(model_dir, registry.parent / "lora", seed=1, modules=("q_proj", "v_proj"))
    version = AdapterRegistry(registry).register(out, dataset_manifest={"bench": True}, lineage={})
    return f"{model_name(model_dir)}+{version}"


def with_shadow(app: Any, challenger: str | None, rate: float) -> None:
    chat = app.state.chat
    state = deployments.initial_state(chat.deployment.champion, [5, 10, 25, 50])
    if challenger is not None:
        state = deployments.set_challenger(state, challenger, by="bench", sample_rate=rate)
    chat.deployment = state  # the adapter loads on first use


async def closed_loop(url: str, payloads: list[dict[str, Any]], clients: int) -> list[float]:
    queue = list(payloads)
    latencies: list[float] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue:
            seconds, response = await post(client, url, queue.pop())
            assert response.status_code == 200, response.text
            latencies.append(seconds)

    async with httpx.AsyncClient(headers=HEADERS, timeout=600) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return latencies


def shadow_counts(app: Any) -> dict[str, float]:
    text = app.state.metrics.render().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("flywheel_shadow_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            counts[outcome] = float(line.rsplit(" ", 1)[1])
    return counts


def quantiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def bench_shadow(runtime: ModelRuntime, workdir: Path, challenger: str) -> None:
    requests = requests16()
    payloads = [body(r, max_tokens=12, user=f"u{i}") for i, r in enumerate(requests)]
    print(f"shadow overhead: 4 concurrent clients, {len(payloads)} requests per run, max_tokens 12, {REPEATS} runs")
    with gateway(runtime, workdir) as (url, app):
        with_shadow(app, challenger, 1.0)
        asyncio.run(closed_loop(url, payloads[:8], 4))  # warm-up, loads the adapter
        time.sleep(2)
        results: dict[str, list[float]] = {"off": [], "100%": [], "10%": []}
        before = shadow_counts(app)
        for _ in range(REPEATS):
            for label, rate in (("off", None), ("100%", 1.0), ("10%", 0.1)):
                with_shadow(app, None if rate is None else challenger, rate or 0.0)
                results[label] += asyncio.run(closed_loop(url, payloads, 4))
                while app.state.chat.shadow.in_flight:  # let shadow copies finish between runs
                    time.sleep(0.1)
        after = shadow_counts(app)
    p50_off, p99_off = quantiles(results["off"])
    for label in ("100%", "10%"):
        p50, p99 = quantiles(results[label])
        print(
            f"  shadow {label:>4}: p50 {p50:.3f} s (off {p50_off:.3f}) ratio {p50 / p50_off:.2f};"
            f" p99 {p99:.3f} s (off {p99_off:.3f}) ratio {p99 / p99_off:.2f}"
        )
    done = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    total = sum(done.values())
    print(f"  shadow copies: {done}; completed {done.get('completed', 0) / max(total, 1):.1%}")


async def open_loop(url: str, payloads: list[dict[str, Any]], rate: float, seconds: float) -> dict[str, Any]:
    statuses: list[int] = []
    latencies: list[float] = []
    retry_after: list[str | None] = []
    errors = 0

    async def one(client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
        nonlocal errors
        try:
            latency, response = await post(client, url, payload)
        except httpx.HTTPError:
            errors += 1
            return
        statuses.append(response.status_code)
        if response.status_code == 200:
            latencies.append(latency)
        else:
            retry_after.append(response.headers.get("retry-after"))

    async with httpx.AsyncClient(headers=HEADERS, timeout=120, limits=httpx.Limits(max_connections=1000)) as client:
        tasks, start, i = [], time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            tasks.append(asyncio.ensure_future(one(client, payloads[i % len(payloads)])))
            i += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    return {"statuses": statuses, "latencies": latencies, "retry_after": retry_after, "errors": errors}


def bench_overload(runtime: ModelRuntime, workdir: Path, challenger: str) -> None:
    payloads = [body(r, max_tokens=16, user=f"u{i}") for i, r in enumerate(requests16())]
    with gateway(runtime, workdir, max_queued_requests=16, shadow_queue_size=4) as (url, app):
        with_shadow(app, challenger, 1.0)
        asyncio.run(closed_loop(url, payloads[:4], 4))
        with_shadow(app, None, 0.0)
        # Sustainable: these very requests, 16 at once, shadow off (continuous batching keeps up with them).
        sustainable = len(payloads) / statistics.median(asyncio.run(concurrent(url, payloads))[0] for _ in range(3))
        rate = 4 * sustainable
        print(
            f"overload: open loop at {rate:.1f} req/s (4x {sustainable:.1f} sustainable), 10 s per run, {REPEATS} runs"
        )
        p99s: dict[str, list[float]] = {"off": [], "on": []}
        refusals: dict[str, list[int]] = {"off": [], "on": []}
        bad = 0
        for _ in range(REPEATS):
            for label in ("off", "on"):
                with_shadow(app, challenger if label == "on" else None, 1.0)
                result = asyncio.run(open_loop(url, payloads, rate, 10))
                p99s[label].append(quantiles(result["latencies"])[1])
                refusals[label].append(sum(s == 429 for s in result["statuses"]))
                bad += result["errors"] + sum(s not in (200, 429) for s in result["statuses"])
                bad += sum(r is None for r in result["retry_after"])
                while app.state.chat.shadow.in_flight:
                    time.sleep(0.1)
        shed = shadow_counts(app).get("shed", 0)
    off, on = statistics.median(p99s["off"]), statistics.median(p99s["on"])
    print(f"  served p99: shadow off {off:.3f} s, shadow on {on:.3f} s, ratio {on / off:.2f} (target <= 1.10)")
    print(f"  429s per run: off {refusals['off']}, on {refusals['on']}; shadow copies shed {shed:.0f}")
    print(f"  refusals without Retry-After, timeouts or other errors: {bad}")


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the unreachable Kafka is on purpose
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
    threads = torch.get_num_threads()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads {threads}")
    model_dir = prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)
    runtime = ModelRuntime.load(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bench_batching(runtime, workdir)
        challenger = make_challenger(model_dir, workdir / "registry")
        bench_shadow(runtime, workdir, challenger)
        bench_overload(runtime, workdir, challenger)


if __name__ == "__main__":
    main()
