"""A service (``flywheel gateway``, ``worker`` or ``proxy``) as a child process: the demo and benchmarks start them.

The child runs ``python -m services.cli.main <name> [args] --port <free port>`` with the given environment
(its settings), in a process group of its own, writes its log to ``<workdir>/<log name>.log``, and counts
as ready once ``/healthz`` answers 200 (or the caller's own readiness check passes). Leaving the block
sends it SIGTERM, waits for it to end (30 s by default), then SIGKILLs whatever is left of its group:
a gateway's processes, an engine's workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.cli.ports import free_port

READY_TIMEOUT_S = 900.0  # the first run converts the model (tens of seconds on 2 cores)
STOP_TIMEOUT_S = 30.0  # after SIGTERM, then SIGKILL to the group


@dataclass(frozen=True)
class Service:
    """A running service: where it answers, its process id and its log."""

    url: str
    pid: int
    log: Path


@contextmanager
def service_process(
    name: str,
    workdir: Path,
    env: dict[str, str],
    args: Sequence[str] = (),
    *,
    log_name: str | None = None,
    ready: Callable[[str], bool] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> Iterator[Service]:
    """Start ``flywheel <name> [args]`` on a free port, wait until ``ready(url)`` (default: ``/healthz`` answers
    200; a transport error counts as not ready), stop it and its group at the end.

    The log is ``<workdir>/<log_name or name>.log``.
    """
    port = free_port()
    log_path = workdir / f"{log_name or name}.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", name, *args, "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its group is its own: whatever it starts is stopped with it
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(name, url, proc, log_path, ready or _healthy, ready_timeout_s)
            yield Service(url, proc.pid, log_path)
        finally:
            stop_group(proc, stop_timeout_s)


def _healthy(url: str) -> bool:
    return httpx.get(f"{url}/healthz", timeout=2).status_code == 200


def _wait_ready(
    name: str, url: str, proc: subprocess.Popen[bytes], log_path: Path, ready: Callable[[str], bool], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-3000:]
            raise SystemExit(f"flywheel {name} exited with code {proc.returncode}:\n{tail}")
        with suppress(httpx.TransportError):  # not listening yet
            if ready(url):
                return
        time.sleep(0.5)
    raise SystemExit(f"flywheel {name} was not ready after {timeout_s:.0f} s (log {log_path})")


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM to the service (it stops what it started), then SIGKILL to anything left of its group."""
    proc.terminate()
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
