"""Gateway replicas as processes, and the round-robin proxy in front of them, for the benchmarks.

Each replica is a ``flywheel gateway`` process with a write-ahead log of its own; all of them read
the run's topics and share one adapter registry. The proxy is a ``flywheel proxy`` process. Kept
light to import (no model, no torch).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from bench_load import is_ready, service_env
from pipeline_events import wait_until

from feedback.settings import KafkaSettings
from services.cli.processes import Service, service_process

READY_TIMEOUT_S = 300.0  # a replica reads its deployment state and keys, and loads the model, seconds
NO_KEY_LIMITS = {"rate_per_s": 1e6, "burst": 1_000_000, "max_in_flight": 100_000}  # one key sends everything


def machine() -> str:
    """The machine line every benchmark prints."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load average {load}"


@contextmanager
def gateway_replicas(
    kafka: KafkaSettings, workdir: Path, count: int, *, threads: int, registry: Path | None = None
) -> Iterator[list[Service]]:
    """``count`` gateway processes, each ready, with ``threads`` torch threads and no per-key limits."""
    with ExitStack() as stack:
        replicas = []
        for n in range(count):
            home = workdir / f"gateway-{n}"
            home.mkdir(parents=True, exist_ok=True)
            env = service_env(kafka, home, **NO_KEY_LIMITS) | {"FLYWHEEL_MODEL__THREADS": str(threads)}
            if registry is not None:
                env["FLYWHEEL_MODEL__REGISTRY_DIR"] = str(registry)
            replicas.append(stack.enter_context(service_process("gateway", home, env)))
        for replica in replicas:
            wait_until(lambda r=replica: is_ready(r.url), READY_TIMEOUT_S, f"{replica.url} to be ready")
        yield replicas


@contextmanager
def proxy(workdir: Path, replicas: list[Service]) -> Iterator[Service]:
    """A ``flywheel proxy`` process in front of ``replicas``."""
    args = [arg for replica in replicas for arg in ("--upstream", replica.url)]
    home = workdir / "proxy"
    home.mkdir(parents=True, exist_ok=True)
    with service_process("proxy", home, dict(os.environ), args) as service:
        assert httpx.get(f"{service.url}/readyz", timeout=30).status_code == 200
        yield service
