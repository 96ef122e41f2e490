"""GPU serving benchmarks: the gateway on vLLM against raw vLLM, the transformers backend, shadow and load.

Needs a CUDA GPU and the GPU extra (``infra/gpu/install.sh bench`` installs it and runs this). The
gateway runs in this process under uvicorn, Kafka unreachable (events go to the write-ahead log,
as they do whenever Kafka is away); its clients run in other processes, so the client's own
Python is not counted against the gateway. Every comparison runs its sides in the same run, after
a warm-up, with ``BENCH_REPEATS`` (default 3) repeats, and prints medians and ratios.

Parts (``python tests/bench/bench_gpu_serving.py [PARTS] [--large]``; all by default):

1. ``throughput``: generated tokens/s of N greedy requests (short prompts, ``max_tokens`` 64)
   through the gateway at 1, 16, 64 and 256 concurrent clients, against raw vLLM offline
   generation of the same prompt token ids (``LLM.generate`` on all of them at once, the same
   engine settings as the backend). ``transformers``: the same through the transformers backend
   on the same GPU (bf16), fewer requests per run.
   ``--large`` runs the chosen parts on a model of SmolLM2-1.7B's shape built from the default model's
   configuration with random weights.
2. ``shadow``: served p50/p99 at 64 clients with 100% shadow (a LoRA challenger) against shadow
   off, alternating; the share of shadow copies completed. ``engine``: the same comparison on the
   vLLM backend alone (no HTTP, no gateway: 64 coroutines calling ``VLLMBackend.generate``, each
   served request starting its shadow copy), in a process of its own, so what the engine and vLLM's
   client cost separates from what the gateway's event loop costs. ``BENCH_SHADOW_ON_BASE=1`` sends its
   copies to the base model instead of the challenger's adapter (no LoRA rows in the batch).
   ``BENCH_SHADOW_SHARES`` (default ``1``, comma-separated) sets the shares of requests copied, each
   measured against shadow off in the same runs; ``BENCH_SHADOW_ENGINE=1`` runs the copies of both parts
   on an engine of their own (``gateway.vllm.shadow_engine``).
3. ``latency``: open-loop arrivals of short requests (16 generated tokens) at rising rates; p50,
   p99, refusals and failures per rate, and the GPU's utilisation sampled during each step.

``BENCH_VLLM_EAGER=1`` (the default) starts both vLLM engines without compilation or CUDA graphs
(seconds instead of minutes, slower decoding for both); ``0`` compiles. ``BENCH_PER_CLIENT`` (default
8) sets the requests per client and run of ``throughput``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
from bench_serving import KEY, make_challenger, quantiles, serve, shadow_counts, with_shadow
from load_client import Phase, open_loop

from feedback.events import ChatMessage
from feedback.model.runtime import ModelRuntime, SamplingParams, render_chat
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.registry import AdapterRegistry
from feedback.settings import GatewaySettings, ModelSettings, Settings, VLLMSettings
from services.cli.credentials import bearer
from services.gateway.backend import InferenceBackend, TransformersBackend

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
EAGER = os.environ.get("BENCH_VLLM_EAGER", "1") == "1"
SHADOW_ON_BASE = os.environ.get("BENCH_SHADOW_ON_BASE") == "1"  # the engine part's copies on the base model
SHADOW_ENGINE = os.environ.get("BENCH_SHADOW_ENGINE") == "1"  # copies on an engine of their own
SHADOW_SHARES = tuple(float(share) for share in os.environ.get("BENCH_SHADOW_SHARES", "1").split(","))
CLIENT_PROCESSES = 4  # the clients' Python is spread over this many processes
LEVELS = (1, 16, 64, 256)  # concurrent clients
MAX_TOKENS = 64
GPU_SHARE = 0.5  # of the GPU's memory, for each vLLM engine (they run one after the other)
SUBJECTS = ["sleep", "water", "exercise", "reading", "music", "friends", "maths", "history", "cooking", "rain"]
ASKS = ["Explain why {} matters.", "Give two tips about {}.", "What is surprising about {}?", "Describe {} briefly."]
LARGE_SHAPE = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24}  # SmolLM2-1.7B
LARGE_SHAPE |= {"num_attention_heads": 32, "num_key_value_heads": 32}


def machine() -> str:
    """The machine line (the GPU machine has no DuckDB, so not the CPU benchmarks' helper)."""
    return f"machine: {platform.machine()}, {os.cpu_count()} cpus"


def requests(n: int, max_tokens: int = MAX_TOKENS) -> list[dict[str, Any]]:
    """``n`` greedy chat requests with short prompts (under 64 tokens), each of its own user."""
    out = []
    for i in range(n):
        ask = ASKS[i % len(ASKS)].format(SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)])
        content = f"{ask} (question {i})"
        out.append(
            {"model": "flywheel", "messages": [{"role": "user", "content": content}], "temperature": 0}
            | {"max_tokens": max_tokens, "user": f"u{i}"}
        )
    return out


def engine_settings() -> dict[str, Any]:
    """The vLLM engine settings both the backend and the raw engine use."""
    return {"enforce_eager": EAGER, "gpu_memory_utilization": GPU_SHARE, "max_num_seqs": 256}


# ----- raw vLLM, in a process of its own (it frees the GPU when it ends) -----


CHILD = "--child"  # a script's first argument when in_child runs it, so no child's name is taken for a part's


def in_child(script: str, part: str, *args: str) -> Any:
    """``script`` run as ``python script --child part args... OUT`` in a process of its own (its GPU memory is
    freed when it ends): the JSON it wrote to OUT."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        child = subprocess.run([sys.executable, script, CHILD, part, *args, str(out)], check=False)
        if child.returncode != 0 or not out.exists():
            raise RuntimeError(f"{Path(script).name} {part} {' '.join(args)} failed (its output is above)")
        return json.loads(out.read_text())


def raw_vllm(model_dir: Path, n: int) -> dict[str, Any]:
    """Seconds and generated tokens of raw vLLM offline generation of :func:`requests`, from a child process."""
    result: dict[str, Any] = in_child(__file__, "raw", str(model_dir), str(n))
    return result


def raw_child(model_dir: Path, n: int, out: Path) -> None:
    """In the child: the same engine settings as the backend, the prompts rendered by the same template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    prompts = [{"prompt_token_ids": render_chat(tokenizer, r["messages"])} for r in requests(n)]
    out.write_text(json.dumps(timed_generation(raw_engine(model_dir), prompts)))


def raw_engine(model_dir: Path, quantization: str = "none") -> Any:
    """Raw vLLM (``LLM``) with the backend's engine settings, its weights quantized as asked."""
    from vllm import LLM

    return LLM(
        model=str(model_dir),
        dtype="bfloat16",
        quantization=None if quantization == "none" else quantization,
        enable_lora=True,
        max_lora_rank=VLLMSettings().max_lora_rank,
        generation_config="vllm",
        **engine_settings(),
    )


# ----- the vLLM backend alone, in a process of its own -----


def engine_shadow(model_dir: Path, registry: Path, challenger: str) -> dict[str, list[float]]:
    """Served latencies with shadow off and 100% (see :func:`engine_child`), from a child process."""
    result: dict[str, list[float]] = in_child(__file__, "engine", str(model_dir), str(registry), challenger)
    return result


def engine_child(model_dir: Path, registry: Path, challenger: str, out: Path) -> None:
    out.write_text(json.dumps(asyncio.run(_engine_shadow(model_dir, registry, challenger))))


async def _engine_shadow(model_dir: Path, registry: Path, challenger: str) -> dict[str, list[float]]:
    """The gateway's backend with the gateway's settings, driven by 64 closed-loop coroutines in this loop."""
    from services.gateway.backend import GenerationRequest
    from services.gateway.metrics import GatewayMetrics
    from services.gateway.vllm_backend import VLLMBackend

    settings = GatewaySettings.model_validate(gateway_settings("vllm"))
    backend = VLLMBackend(model_dir, settings, AdapterRegistry(registry))
    await backend.start(GatewayMetrics())
    try:
        if SHADOW_ON_BASE:  # no LoRA rows in the batch, and no adapter to load
            challenger = backend.base
        await backend.load(challenger)
        jobs = [
            GenerationRequest(
                messages=tuple(ChatMessage.model_validate(m) for m in r["messages"]),
                params=SamplingParams(max_tokens=r["max_tokens"], temperature=0),
                model_version=backend.base,
            )
            for r in requests(512, max_tokens=32)
        ]
        await _backend_closed(backend, jobs[:128], challenger, 1.0)  # warm-up, both kinds
        latencies: dict[str, list[float]] = {label: [] for label in shadow_labels()}
        for _ in range(REPEATS):
            for label, share in shadow_labels().items():
                latencies[label] += await _backend_closed(backend, jobs, challenger, share)
        return latencies
    finally:
        await backend.close()


def shadow_labels() -> dict[str, float]:
    """Each measured side's label and share of requests copied: shadow off, then SHADOW_SHARES."""
    return {"off": 0.0} | {f"{share:.0%}": share for share in SHADOW_SHARES}


def copied(n: int, share: float) -> list[bool]:
    """Which of ``n`` requests in turn get a shadow copy: ``share`` of them, spread evenly."""
    return [math.floor((i + 1) * share) > math.floor(i * share) for i in range(n)]


async def _backend_closed(
    backend: Any, jobs: list[Any], challenger: str, share: float, clients: int = 64
) -> list[float]:
    """Served latencies of ``jobs`` sent by ``clients`` coroutines; ``share`` of them start a shadow copy first.

    Returns once every copy has finished too, so no run's copies spill into the next.
    """
    copies: list[asyncio.Task[Any]] = []
    with_copy = {id(job) for job, copy in zip(jobs, copied(len(jobs), share), strict=True) if copy}

    async def send(job: Any) -> bool:
        if id(job) in with_copy:
            copy = dataclasses.replace(job, model_version=challenger, role="shadow")
            copies.append(asyncio.create_task(backend.generate(copy)))
        await backend.generate(job)
        return True

    latencies = await closed_loop(jobs, clients, send)
    await asyncio.gather(*copies)
    return latencies


async def closed_loop(items: list[Any], workers: int, send: Callable[[Any], Awaitable[bool]]) -> list[float]:
    """``workers`` coroutines taking ``items`` in order, each sending its next as soon as ``send`` returned:
    the seconds of every send that counted (returned True)."""
    queue = list(reversed(items))
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            item = queue.pop()
            start = time.perf_counter()
            if await send(item):
                latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return latencies


def print_shadow(title: str, latencies: dict[str, list[float]]) -> None:
    """Served p50 and p99 with each share of shadow against off, and their ratios."""
    title += ", copies on an engine of their own" if SHADOW_ENGINE else ""
    p50_off, p99_off = quantiles(latencies["off"])
    for label in [label for label in latencies if label != "off"]:
        p50, p99 = quantiles(latencies[label])
        print(f"  {title}, {label} shadow: served p50 {p50:.4f} s vs off {p50_off:.4f} s: ratio {p50 / p50_off:.3f}")
        print(f"  {title}, {label} shadow: served p99 {p99:.4f} s vs off {p99_off:.4f} s: ratio {p99 / p99_off:.3f}")
    print("  (target: p50 ratio <= 1.05 at 100% shadow)")


def greedy() -> Any:
    """The benchmarks' sampling: greedy, MAX_TOKENS tokens at most."""
    from vllm import SamplingParams

    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0)


def timed_generation(llm: Any, prompts: list[dict[str, list[int]]]) -> dict[str, Any]:
    """Seconds of each of REPEATS generations of all ``prompts`` at once (after a warm-up), and the tokens of one."""
    llm.generate(prompts[:64], greedy(), use_tqdm=False)  # warm-up
    seconds, tokens = [], 0
    for _ in range(REPEATS):
        start = time.perf_counter()
        outputs = llm.generate(prompts, greedy(), use_tqdm=False)
        seconds.append(time.perf_counter() - start)
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"seconds": seconds, "tokens": tokens}


# ----- clients, in other processes -----


def closed_client(url: str, key: str, payloads: list[dict[str, Any]], clients: int) -> tuple[int, list[float], int]:
    """``clients`` clients sending ``payloads`` in turn: (completion tokens, latencies, failures).

    The key comes from the parent: a client process imports the benchmark modules afresh, new keys and all.
    """
    return asyncio.run(_closed(url, key, payloads, clients))


async def _closed(url: str, key: str, payloads: list[dict[str, Any]], clients: int) -> tuple[int, list[float], int]:
    tokens = failures = 0
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(headers=bearer(key), timeout=600, limits=limits) as client:

        async def send(payload: dict[str, Any]) -> bool:
            nonlocal tokens, failures
            response = await client.post(f"{url}/v1/chat/completions", json=payload)
            if response.status_code != 200:
                failures += 1
                return False
            tokens += response.json()["usage"]["completion_tokens"]
            return True

        latencies = await closed_loop(payloads, clients, send)
    return tokens, latencies, failures


def open_client(url: str, key: str, rate: float, seconds: float) -> Phase:
    """Open-loop arrivals at ``rate`` per second for ``seconds`` (load_client's short requests)."""
    return asyncio.run(open_loop(f"{rate:.0f}/s", url, [key], rate, seconds))


class Clients:
    """A pool of client processes: closed loops split into even shares, open loops into even rates."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(CLIENT_PROCESSES, mp_context=get_context("spawn"))

    def close(self) -> None:
        self._pool.shutdown()

    def closed(self, url: str, payloads: list[dict[str, Any]], clients: int) -> tuple[float, int, list[float], int]:
        """Wall seconds, tokens, latencies and failures of ``payloads`` sent by ``clients`` clients."""
        shares = min(CLIENT_PROCESSES, clients)
        start = time.perf_counter()
        futures = [
            self._pool.submit(closed_client, url, KEY, payloads[i::shares], clients // shares + (i < clients % shares))
            for i in range(shares)
        ]
        results = [f.result() for f in futures]
        seconds = time.perf_counter() - start
        return seconds, sum(r[0] for r in results), [x for r in results for x in r[1]], sum(r[2] for r in results)

    def open(self, url: str, rate: float, seconds: float) -> Phase:
        """All processes' outcomes of open-loop arrivals at ``rate`` in all."""
        futures = [
            self._pool.submit(open_client, url, KEY, rate / CLIENT_PROCESSES, seconds) for _ in range(CLIENT_PROCESSES)
        ]
        phases = [f.result() for f in futures]
        return Phase(f"{rate:.0f}/s", rate, max(p.seconds for p in phases), [o for p in phases for o in p.outcomes])


# ----- the gateway on either backend -----


def vllm_backend_for(model_dir: Path, workdir: Path) -> Callable[[Settings], InferenceBackend]:
    from services.gateway.vllm_backend import VLLMBackend

    return lambda settings: VLLMBackend(model_dir, settings.gateway, AdapterRegistry(workdir / "registry"))


def transformers_backend_for(model_dir: Path, workdir: Path) -> Callable[[Settings], InferenceBackend]:
    runtime = ModelRuntime.load(model_dir, device="cuda", dtype="bfloat16")
    return lambda settings: TransformersBackend(runtime, settings.gateway, AdapterRegistry(workdir / "registry"))


def gateway_settings(backend: str) -> dict[str, Any]:
    """Room for every client's request and shadow copy: the engine's capacity is measured, not our bounds."""
    return {
        "backend": backend,
        "vllm": engine_settings() | {"shadow_engine": SHADOW_ENGINE},
        "max_batch_size": 256,
        "max_queued_requests": 4096,
        "shadow_queue_size": 1024,
        "shadow_concurrency": 256,
        "shadow_preempt_depth": 1024,
        "wal": {"max_bytes": 8 * 1024**3},
    }


@contextmanager
def gateway(backend_for: Callable[[Settings], InferenceBackend], workdir: Path, backend: str) -> Iterator[Any]:
    with serve(backend_for, workdir, **gateway_settings(backend)) as served:
        yield served


def gateway_levels(clients: Clients, url: str, n_of: Callable[[int], int]) -> dict[int, list[float]]:
    """Tokens/s at each level (warm-up, then REPEATS runs, levels alternating), failures fail the bench."""
    rates: dict[int, list[float]] = {level: [] for level in LEVELS}
    clients.closed(url, requests(64), 16)  # warm-up
    for _ in range(REPEATS):
        for level in LEVELS:
            seconds, tokens, _, failures = clients.closed(url, requests(n_of(level)), level)
            if failures:
                raise RuntimeError(f"{failures} requests failed at {level} clients")
            rates[level].append(tokens / seconds)
    return rates


PER_CLIENT = int(os.environ.get("BENCH_PER_CLIENT", "8"))  # requests per client and run at each level (16 at 1)
N_REQUESTS = PER_CLIENT * max(LEVELS)  # raw vLLM's prompts: the 256-client level's, the others send the first ones
TRANSFORMERS_REQUESTS = {1: 4, 16: 32, 64: 128, 256: 512}  # the slower backend gets fewer per run


def print_levels(title: str, rates: dict[int, list[float]], baseline: dict[int, float], against: str) -> None:
    print(f"  {'clients':>7} {title:>28} {against:>22}")
    for level, values in rates.items():
        print(f"  {level:>7} {statistics.median(values):>28.1f} {statistics.median(values) / baseline[level]:>22.2f}")


def throughput(url: str, clients: Clients, raw: dict[str, Any]) -> dict[int, float]:
    """Tokens/s of the vLLM gateway per level against the raw engine; returns the medians."""
    raw_rate = raw["tokens"] / statistics.median(raw["seconds"])
    print(f"throughput: {PER_CLIENT} requests per client (16 at 1 client), max_tokens {MAX_TOKENS}, {REPEATS} runs")
    print(f"  raw vLLM offline, all {N_REQUESTS} at once: {raw_rate:.1f} tok/s ({raw['tokens']} tokens per run)")
    rates = gateway_levels(clients, url, lambda level: max(16, PER_CLIENT * level))
    print_levels("gateway on vLLM, tok/s", rates, dict.fromkeys(LEVELS, raw_rate), "/ raw vLLM (>= 0.9)")
    return {level: statistics.median(values) for level, values in rates.items()}


def transformers_throughput(model_dir: Path, workdir: Path, clients: Clients, vllm: dict[int, float]) -> None:
    """The transformers backend on the same GPU (bf16), against the vLLM gateway's medians."""
    with gateway(transformers_backend_for(model_dir, workdir), workdir, "transformers") as (url, _):
        rates = gateway_levels(clients, url, TRANSFORMERS_REQUESTS.__getitem__)
    print(f"transformers backend on the same GPU, bf16, requests per run {TRANSFORMERS_REQUESTS}")
    print_levels("gateway on transformers, tok/s", rates, vllm, "vLLM / transformers")
    for level in LEVELS:
        print(f"  at {level} clients the vLLM gateway is {vllm[level] / statistics.median(rates[level]):.1f}x")


def shadow(url: str, app: Any, clients: Clients, challenger: str) -> None:
    payloads = requests(512, max_tokens=32)
    print(f"shadow overhead: 64 clients, {len(payloads)} requests per run (max_tokens 32), {REPEATS} runs each side")
    with_shadow(app, challenger, 1.0)
    clients.closed(url, payloads[:128], 64)  # warm-up, loads the adapter
    settle(app)
    before = shadow_counts(app)
    latencies: dict[str, list[float]] = {label: [] for label in shadow_labels()}
    for _ in range(REPEATS):
        for label, share in shadow_labels().items():
            with_shadow(app, challenger if share else None, share)
            _, _, values, failures = clients.closed(url, payloads, 64)
            if failures:
                raise RuntimeError(f"{failures} served requests failed with shadow {label}")
            latencies[label] += values
            settle(app)
    after = shadow_counts(app)
    print_shadow("gateway", latencies)
    done = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    print(f"  shadow copies: {done}; completed {done.get('completed', 0) / max(sum(done.values()), 1):.1%}")


def settle(app: Any) -> None:
    """Wait until no shadow copy is in flight."""
    while app.state.chat.shadow.in_flight:
        time.sleep(0.05)


def latency(url: str, clients: Clients) -> None:
    rates = [float(r) for r in os.environ.get("BENCH_RATES", "100,250,500,1000,1500").split(",")]
    print("latency: open-loop short requests (16 tokens, one in four streamed), 10 s per rate")
    print(f"  {'offered/s':>9} {'served/s':>9} {'p50 s':>7} {'p99 s':>7} {'429':>6} {'failed':>6} {'GPU util':>8}")
    clients.open(url, 50, 3)  # warm-up
    for rate in rates:
        with gpu_utilisation() as samples:
            phase = clients.open(url, rate, 10)
        p50, p99 = phase.latency()
        refused = sum(o.status == 429 for o in phase.outcomes)
        util = statistics.mean(samples) if samples else float("nan")
        print(
            f"  {rate:>9.0f} {phase.served_per_s():>9.1f} {p50:>7.3f} {p99:>7.3f} {refused:>6}"
            f" {len(phase.failures):>6} {util:>7.0f}%"
        )


@contextmanager
def gpu_utilisation(every_ms: int = 100) -> Iterator[list[float]]:
    """The GPU's utilisation (percent) sampled every ``every_ms`` by ``nvidia-smi`` while the block runs."""
    query = [
        "nvidia-smi",
        "--query-gpu=utilization.gpu",
        "--format=csv,noheader,nounits",
        f"--loop-ms={every_ms}",
        "--id=0",
    ]
    sampler = subprocess.Popen(query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    samples: list[float] = []

    def read() -> None:
        assert sampler.stdout is not None
        for line in sampler.stdout:
            if line.strip().isdigit():
                samples.append(float(line))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        sampler.terminate()
        sampler.wait()
        thread.join()


def large_model(model_dir: Path, out: Path) -> Path:
    """A model of SmolLM2-1.7B's shape from the default model's configuration, random bf16 weights, same tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    for name, value in LARGE_SHAPE.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir, local_files_only=True).save_pretrained(out)
    for extra in ("generation_config.json",):
        if (model_dir / extra).exists():
            (out / extra).write_bytes((model_dir / extra).read_bytes())
    del model
    torch.cuda.empty_cache()
    return out


PARTS = ("throughput", "transformers", "engine", "shadow", "latency")


def run(parts: list[str], model_dir: Path, workdir: Path, clients: Clients) -> None:
    """The chosen parts; the vLLM ones share one gateway, started after raw vLLM has ended."""
    raw = raw_vllm(model_dir, N_REQUESTS) if "throughput" in parts else None
    challenger = make_challenger(model_dir, workdir / "registry") if {"shadow", "engine"} & set(parts) else ""
    if "engine" in parts:
        print(f"shadow overhead, the backend alone: 64 coroutines, 512 requests a run (max_tokens 32), {REPEATS} runs")
        title = "backend" + (", copies on the base model" if SHADOW_ON_BASE else "")
        print_shadow(title, engine_shadow(model_dir, workdir / "registry", challenger))
    vllm: dict[int, float] = {}
    if not {"throughput", "shadow", "latency"} & set(parts):
        return  # no part needs the gateway on vLLM ("transformers" compares with its throughput)
    with gateway(vllm_backend_for(model_dir, workdir), workdir, "vllm") as (url, app):
        if raw is not None:
            vllm = throughput(url, clients, raw)
        if "shadow" in parts:
            shadow(url, app, clients, challenger)
        if "latency" in parts:
            latency(url, clients)
    if "transformers" in parts and vllm:
        transformers_throughput(model_dir, workdir, clients, vllm)


def main(argv: list[str]) -> None:
    if argv[:2] == [CHILD, "raw"]:
        raw_child(Path(argv[2]), int(argv[3]), Path(argv[4]))
        return
    if argv[:2] == [CHILD, "engine"]:
        engine_child(Path(argv[2]), Path(argv[3]), argv[4], Path(argv[5]))
        return
    warnings.filterwarnings("ignore")  # vLLM's and its dependencies' deprecation warnings
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the unreachable Kafka is on purpose
    large = "--large" in argv  # SmolLM2-1.7B's shape, random weights
    parts = [a for a in argv if not a.startswith("--")] or list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}: choose from {', '.join(PARTS)}")
    import torch

    print(f"{machine()}, {torch.cuda.get_device_name()}, torch {torch.__version__}, eager {EAGER}")
    model_dir = prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)
    clients = Clients()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            if large:
                model_dir = large_model(model_dir, workdir / "smollm2-1.7b-shape")
            print(f"model: {model_dir.name}")
            run(parts, model_dir, workdir, clients)
    finally:
        clients.close()


if __name__ == "__main__":
    main(sys.argv[1:])
