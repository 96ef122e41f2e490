"""A service (``flywheel gateway``, ``worker`` or ``proxy``) as a child process: the demo and benchmarks start them.

The child runs ``python -m services.cli.main <name> [args] --port <free port>`` with the given environment
(its settings), writes its log to ``<workdir>/<name>.log``, and counts as ready once ``/healthz``
answers 200. Leaving the block stops it with SIGTERM (SIGKILL after 30 s).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.cli.ports import free_port

READY_TIMEOUT_S = 900.0  # the first run converts the model (tens of seconds on 2 cores)


@dataclass(frozen=True)
class Service:
    """A running service: where it answers, its process id and its log."""

    url: str
    pid: int
    log: Path


@contextmanager
def service_process(name: str, workdir: Path, env: dict[str, str], args: Sequence[str] = ()) -> Iterator[Service]:
    """Start ``flywheel <name> [args]`` on a free port, wait until it is ready, stop it at the end."""
    port = free_port()
    log_path = workdir / f"{name}.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", name, *args, "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(name, url, proc, log_path)
            yield Service(url, proc.pid, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-3000:]
            raise SystemExit(f"flywheel {name} exited with code {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"flywheel {name} was not ready after {READY_TIMEOUT_S:.0f} s (log {log_path})")
