"""GPU benchmark: ``flywheel gateway --processes P`` on vLLM, for P in 1, 2, 4 and 8 processes on one port.

One gateway process's event loop tops out at a few hundred requests a second while the GPU behind it
waits; this measures what more processes on the same GPU give. For each P, in turn, the gateway runs
as a child process (``python -m services.cli.main gateway --processes P``, the interpreter and
``PYTHONPATH`` of this script) on the vLLM backend, ``gateway.vllm.gpu_memory_utilization`` 0.8 for
the P processes together, in turn (side by side) each way of using the GPU that ``--engines``
(``BENCH_ENGINES``, default ``own,shared``) names:

- ``own``: an engine in each process (``gateway.vllm.shared_engine`` false, the default), 0.8/P each,
  started one after another;
- ``shared``: one engine that the parent starts, fed by all P processes
  (services/gateway/shared_engine.py), with the whole 0.8 (not for P = 1, where the two are the same);

and with:

- Kafka unreachable (a free port, 200 ms bootstrap timeout, as ``bench_serving.serve``): events wait
  in each process's write-ahead log, as whenever Kafka is away;
- **authentication off** (``security.auth = "off"``, development): keys live only on the keys topic,
  which a gateway process cannot read with Kafka away, and a separate process cannot be handed a key
  book. So the key check's CPU time (a hash and a look-up per request) is not counted; the content
  filter, routing, events and metrics are;
- per-key limits out of the way and 4,096 queued requests per process (the engine's capacity is
  measured, not our bounds).

First (unless ``--no-raw``) it times raw vLLM offline generation of the closed loop's prompts
(``bench_gpu_serving.raw_vllm``: all at once, the same engine settings), the reference of the serving
target (the gateway at 256 clients at least 0.9 of it); a compiled raw engine also fills vLLM's compile
cache for the gateways. For each P it waits until every process answered ``/readyz`` (with engines of
their own, P processes take P engine starts one after another), then measures, with clients in 4
processes of their own (``bench_gpu_serving.Clients``):

1. closed loop: 256 clients sending ``bench_gpu_serving.requests`` (greedy, ``max_tokens`` 64),
   ``BENCH_PER_CLIENT`` (8) requests per client and run, median tokens/s of ``BENCH_REPEATS`` (3) runs
   after a warm-up, and the GPU's utilisation;
2. open loop: short requests (``load_client``: 16 tokens, one in four streamed) at each of
   ``BENCH_RATES`` (250,500,1000,1500,2000 a second) for 10 s: offered/s, served/s, p50, p99, 429s,
   failures, GPU utilisation;

and prints a table per P and a summary line per P: tokens/s against P = 1, the highest rate held (every
request served, p99 under the 200 ms target) and the most served a second. ``BENCH_PROCESSES`` picks the process counts,
``BENCH_VLLM_EAGER=1`` starts the engines without compilation or CUDA graphs (default 0: compiled).

Run on the GPU machine: ``infra/gpu/install.sh bench infra/gpu/wheels bench_gpu_processes.py``. Each
process count starts a gateway afresh (with engines of their own the engine starts add up: 1 + 2 + 4 + 8 = 15
of them, one at a time); to stay inside a time limit, split the counts over several runs
(``BENCH_PROCESSES=1,2,4`` then ``BENCH_PROCESSES=8``). Each phase prints its seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from bench_gpu_serving import PER_CLIENT, REPEATS, Clients, gpu_utilisation, machine, raw_vllm, requests
from load_client import Phase

from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import ModelSettings
from services.cli.ports import free_port
from services.cli.processes import service_process

GPU_SHARE = 0.8  # of the GPU's memory, for all of a gateway's processes together
CLIENTS = 256  # closed loop
STEP_S = 10.0  # open loop, seconds per rate
P99_TARGET_S = 0.2  # the serving target: p99 under 200 ms with every request served (no 429, no failure)
START_S_PER_PROCESS = 300.0  # patience for each engine start (they start one after another), seconds
STOP_S = 120.0  # SIGTERM, then this long for every process to drain and end, then SIGKILL to the group
GPU_RELEASED_BYTES = 2 * 1024**3  # the next gateway starts once the GPU holds less than this
PROCESS_HEADER = "X-Flywheel-Process"  # which process answered (services/gateway/processes.py)


@dataclass
class Step:
    """One open-loop rate: what was offered and what came back."""

    offered: float
    served_per_s: float
    p50: float
    p99: float
    refused: int
    failed: int
    gpu: float
    why_failed: list[tuple[str, int]]  # the commonest reasons a request failed, with their counts

    @classmethod
    def of(cls, phase: Phase, samples: list[float]) -> Step:
        p50, p99 = phase.latency()
        refused = sum(o.status == 429 for o in phase.outcomes)
        gpu = statistics.mean(samples) if samples else float("nan")
        reasons = Counter(f"{o.status or 'no answer'}: {(o.failure or '')[:80]}" for o in phase.failures)
        failed = len(phase.failures)
        return cls(phase.rate, phase.served_per_s(), p50, p99, refused, failed, gpu, reasons.most_common(3))

    @property
    def held(self) -> bool:
        """Every request served, p99 within the target."""
        return self.refused == 0 and self.failed == 0 and self.p99 <= P99_TARGET_S


@dataclass
class Result:
    """One process count's numbers, one way."""

    processes: int
    engine: str
    start_s: float
    tokens_per_s: float
    closed_failures: int
    closed_gpu: float
    steps: list[Step]


def gateway_env(workdir: Path, processes: int, eager: bool, engine: str) -> dict[str, str]:
    """The gateway's settings as environment variables (module docstring)."""
    prefix = "FLYWHEEL_GATEWAY__"
    return os.environ | {
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "FLYWHEEL_KAFKA__BOOTSTRAP_TIMEOUT_MS": "200",
        "FLYWHEEL_SECURITY__AUTH": "off",
        "FLYWHEEL_SECURITY__ENVIRONMENT": "development",
        "FLYWHEEL_MODEL__REGISTRY_DIR": str(workdir / "registry"),
        f"{prefix}PROCESSES": str(processes),
        f"{prefix}BACKEND": "vllm",
        f"{prefix}VLLM__GPU_MEMORY_UTILIZATION": str(GPU_SHARE),
        f"{prefix}VLLM__ENFORCE_EAGER": str(eager).lower(),
        f"{prefix}VLLM__SHARED_ENGINE": str(engine == "shared").lower(),
        f"{prefix}VLLM__MAX_NUM_SEQS": "256",
        f"{prefix}MAX_QUEUED_REQUESTS": "4096",
        f"{prefix}WAL__DIR": str(workdir / f"wal-{processes}"),
        f"{prefix}WAL__MAX_BYTES": str(4 * 1024**3),  # per process
        f"{prefix}DRAIN_TIMEOUT_S": "0",
        f"{prefix}LIMITS__RATE_PER_S": "1e6",
        f"{prefix}LIMITS__BURST": "1000000",
        f"{prefix}LIMITS__MAX_IN_FLIGHT": "100000",
    }


@contextmanager
def gateway(workdir: Path, processes: int, eager: bool, engine: str) -> Iterator[tuple[str, float]]:
    """``flywheel gateway --processes P`` until every process is ready: (its URL, seconds it took to start)."""
    start = time.perf_counter()
    with service_process(
        "gateway",
        workdir,
        gateway_env(workdir, processes, eager, engine),
        ["--processes", str(processes)],
        log_name=f"gateway-{processes}",
        ready=lambda url: len(ready_slots(url, processes)) >= processes,
        ready_timeout_s=START_S_PER_PROCESS * processes,
        stop_timeout_s=STOP_S,
    ) as service:
        yield service.url, time.perf_counter() - start
    wait_gpu_released()


def ready_slots(url: str, processes: int) -> set[str]:
    """The processes that answered /readyz 200, asking on a new connection each time."""
    seen: set[str] = set()
    for _ in range(8 * processes):
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
        except httpx.TransportError:
            return seen
        if response.status_code == 200:
            seen.add(response.headers.get(PROCESS_HEADER, "0"))  # a single process names none
    return seen


def wait_gpu_released(timeout_s: float = 120.0) -> None:
    """Until the GPU's memory is nearly all free again (the engines' processes have ended)."""
    query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        used_mib = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
        if used_mib.isdigit() and int(used_mib) * 1024**2 < GPU_RELEASED_BYTES:
            return
        time.sleep(1)
    print(f"  warning: the GPU still holds memory {timeout_s:.0f} s after the gateway stopped")


def throughput(clients: Clients, url: str, processes: int) -> tuple[float, int, float]:
    """Median tokens/s of REPEATS closed-loop runs at CLIENTS clients, failures, mean GPU utilisation."""
    clients.closed(url, requests(64 * processes), min(CLIENTS, 16 * processes))  # warm-up, every process
    rates, failures, util = [], 0, []
    for _ in range(REPEATS):
        with gpu_utilisation() as samples:
            seconds, tokens, _, failed = clients.closed(url, requests(PER_CLIENT * CLIENTS), CLIENTS)
        rates.append(tokens / seconds)
        failures += failed
        util += samples
    return statistics.median(rates), failures, statistics.mean(util) if util else float("nan")


def latency_curve(clients: Clients, url: str, rates: list[float], seconds: float) -> list[Step]:
    """Open-loop short requests at each rate, after a 3 s warm-up at 50 a second."""
    clients.open(url, 50, 3)
    steps = []
    for rate in rates:
        with gpu_utilisation() as samples:
            phase = clients.open(url, rate, seconds)
        steps.append(Step.of(phase, samples))
    return steps


def measure(
    clients: Clients, workdir: Path, processes: int, rates: list[float], seconds: float, eager: bool, engine: str
) -> Result:
    with gateway(workdir, processes, eager, engine) as (url, start_s):
        print(f"gateway --processes {processes} ({engine} engine): every process ready after {start_s:.0f} s")
        began = time.perf_counter()
        tokens_per_s, failures, util = throughput(clients, url, processes)
        print(f"  closed loop, {CLIENTS} clients: {tokens_per_s:,.0f} tok/s, {failures} failed, GPU {util:.0f}%")
        steps = latency_curve(clients, url, rates, seconds)
        print_steps(steps)
        print(f"  measured in {time.perf_counter() - began:.0f} s")
    return Result(processes, engine, start_s, tokens_per_s, failures, util, steps)


def print_steps(steps: list[Step]) -> None:
    print(f"  {'offered/s':>9} {'served/s':>9} {'p50 s':>7} {'p99 s':>7} {'429':>6} {'failed':>6} {'GPU util':>8}")
    for s in steps:
        print(
            f"  {s.offered:>9.0f} {s.served_per_s:>9.1f} {s.p50:>7.3f} {s.p99:>7.3f} {s.refused:>6}"
            f" {s.failed:>6} {s.gpu:>7.0f}%"
        )
        for reason, count in s.why_failed:
            print(f"      {count} failed with {reason}")


def raw_tokens_per_s(model_dir: Path, eager: bool) -> float:
    """Raw vLLM offline generation of the closed loop's prompts (``bench_gpu_serving.raw_vllm``): median tokens/s."""
    os.environ["BENCH_VLLM_EAGER"] = "1" if eager else "0"  # the raw child reads it: the gateways' mode
    raw = raw_vllm(model_dir, PER_CLIENT * CLIENTS)
    rate = float(raw["tokens"] / statistics.median(raw["seconds"]))
    runs = " / ".join(f"{raw['tokens'] / s:,.0f}" for s in raw["seconds"])
    print(f"raw vLLM offline, {PER_CLIENT * CLIENTS} prompts at once: {rate:,.0f} tok/s (runs {runs})")
    return rate


def summary(results: list[Result], raw: float | None) -> None:
    """One line per process count and engine, tokens/s against the first's and against raw vLLM."""
    print("summary:")
    base = results[0]
    for r in results:
        against_raw = f", x{r.tokens_per_s / raw:.2f} of raw vLLM" if raw else ""
        held = [s for s in r.steps if s.held]
        best = max(r.steps, key=lambda s: s.served_per_s, default=None)
        held_text = f"{held[-1].offered:.0f}/s (p99 {held[-1].p99:.3f} s)" if held else "none"
        best_text = f"{best.served_per_s:.0f}/s at {best.offered:.0f} offered" if best else "-"
        print(
            f"  P={r.processes} ({r.engine}): start {r.start_s:.0f} s; {r.tokens_per_s:,.0f} tok/s at {CLIENTS} clients"
            f" (x{r.tokens_per_s / base.tokens_per_s:.2f} of P={base.processes} ({base.engine}){against_raw},"
            f" GPU {r.closed_gpu:.0f}%);"
            f" highest rate at p99 <= {P99_TARGET_S} s, all served: {held_text}; most served {best_text}"
        )


def numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--processes", default=os.environ.get("BENCH_PROCESSES", "1,2,4,8"), help="process counts")
    parser.add_argument("--rates", default=os.environ.get("BENCH_RATES", "250,500,1000,1500,2000"), help="per second")
    parser.add_argument("--seconds", type=float, default=STEP_S, help="seconds per open-loop rate")
    parser.add_argument(
        "--eager",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("BENCH_VLLM_EAGER", "0") == "1",
        help="vLLM without compilation or CUDA graphs",
    )
    parser.add_argument(
        "--raw",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first, raw vLLM offline generation of the closed loop's prompts (the issue's reference)",
    )
    parser.add_argument(
        "--engines",
        default=os.environ.get("BENCH_ENGINES", "own,shared"),
        help="comma-separated: own (an engine in each process), shared (one engine fed by every process)",
    )
    args = parser.parse_args(argv)
    args.processes = [int(p) for p in numbers(args.processes)]
    args.rates = numbers(args.rates)
    args.engines = [engine.strip() for engine in args.engines.split(",") if engine.strip()]
    if not args.engines or not set(args.engines) <= {"own", "shared"}:
        parser.error("--engines: own, shared or both, comma-separated")
    if not args.processes or min(args.processes) < 1:
        parser.error("--processes: counts of at least 1, comma-separated")
    return args


def main(argv: list[str]) -> None:
    args = arguments(argv)
    warnings.filterwarnings("ignore")  # vLLM's and its dependencies' deprecation warnings
    logging.basicConfig(level=logging.ERROR)
    import torch

    print(f"{machine()}, {torch.cuda.get_device_name()}, torch {torch.__version__}, eager {args.eager}")
    print(
        f"processes {args.processes}, engines {args.engines}, rates {args.rates}, {args.seconds:.0f} s each,"
        f" GPU share {GPU_SHARE}"
    )
    model_dir = prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)  # once here, not by P processes at once
    began = time.perf_counter()
    raw = raw_tokens_per_s(model_dir, args.eager) if args.raw else None
    clients = Clients()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = [
                measure(clients, Path(tmp), processes, args.rates, args.seconds, args.eager, engine)
                for processes in args.processes
                for engine in args.engines
                if processes > 1 or engine == args.engines[0]
            ]
    finally:
        clients.close()
    summary(results, raw)
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
