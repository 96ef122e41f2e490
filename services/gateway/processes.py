"""Several gateway processes on one port (``flywheel gateway --processes N``, ``gateway.processes``).

One process's event loop tops out at a few hundred requests a second (auth, content filter, routing and
events are Python on that loop), while the engine behind it could take more. So the CLI runs uvicorn's
multi-process supervisor: the parent binds the socket once, starts N worker processes that all accept on
it, restarts one that dies, and stops them all (each drains its event producer) on SIGTERM or SIGINT.

Each worker builds its app here (:func:`create_worker_app`, uvicorn's factory) from the settings in the
environment, like every ``flywheel`` command, with what differs per process:

- its write-ahead log: a slot of its own under ``gateway.wal.dir`` (:mod:`services.gateway.wal_slots`),
  and the leftover logs it replays;
- on vLLM with ``gateway.vllm.shared_engine``, its client of the one engine that the parent
  started before the workers (:mod:`services.gateway.shared_engine`): then a worker or the engine that
  ends stops the whole gateway, with a non-zero exit, instead of being restarted alone
  (:class:`SharedEngineSupervisor`);
- otherwise its vLLM engine's share of the GPU: ``gateway.vllm.gpu_memory_utilization`` / N, and vLLM
  engines start one after another (an engine sizes its KV cache from the GPU's free memory, which another
  engine starting beside it would change under it);
- the ``X-Flywheel-Process: <slot>`` header on every response, and the ``flywheel_gateway_process``
  gauge: ``/metrics`` answers from whichever process accepted the connection (README, "Several processes on one port").
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from prometheus_client import Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from feedback.errors import WalError
from feedback.settings import Settings, load_settings
from services.gateway.shared_engine import ENV as ENGINE_ENV
from services.gateway.shared_engine import SharedEngine, launch, shares_engine
from services.gateway.wal_slots import LeftoverLogs, claim_slot, hold, leftovers

log = logging.getLogger(__name__)

FACTORY = "services.gateway.processes:create_worker_app"
PROCESSES_ENV = "FLYWHEEL_GATEWAY__PROCESSES"  # how the parent tells its workers N (they read settings afresh)
PROCESS_HEADER = "X-Flywheel-Process"
HEALTHCHECK_TIMEOUT_S = 30  # a worker whose supervisor pipe is silent this long is killed and replaced
ENGINE_START_LOCK = "engine-start.lock"  # in gateway.wal.dir: one vLLM engine starts at a time
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as the CLI's

PROCESS = Gauge("flywheel_gateway_process", "The write-ahead log slot of the gateway process that answered")


def serve(settings: Settings, host: str, port: int, processes: int) -> bool:
    """Run ``processes`` gateway workers on ``host:port`` until SIGTERM or SIGINT; False if one failed.

    uvicorn's supervisor stops the others when a worker fails before it serves: a broken start (settings,
    model, GPU memory) would fail the same way again. With a shared engine (started first; a ModelError if
    it cannot start), any worker or the engine ending stops them all. The port is bound before anything
    starts.
    """
    os.environ[PROCESSES_ENV] = str(processes)  # the spawned workers inherit the environment
    config = uvicorn.Config(
        FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=processes,
        log_level="info",
        timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT_S,
    )
    sockets = [config.bind_socket()]
    if not shares_engine(settings, processes):
        supervisor = Multiprocess(config, sockets=sockets)
        supervisor.run()
        return all(worker.exitcode != STARTUP_FAILURE for worker in supervisor.processes)
    with _signals_end_the_start(), launch(settings, processes) as (engine, engine_alive):
        os.environ[ENGINE_ENV] = engine.to_environment()
        shared = SharedEngineSupervisor(config, sockets, engine_alive)
        shared.run()
    return not shared.failed


class SharedEngineSupervisor(Multiprocess):
    """uvicorn's supervisor for workers that share one engine: a worker or the engine ending stops them all.

    The engine greets each of its clients once, so a replacement worker could not reach it; and the
    workers are fixed at N (no SIGHUP restarts, no SIGTTIN/SIGTTOU resizing).
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], engine_alive: Callable[[], bool]) -> None:
        super().__init__(config, sockets)
        self._engine_alive = engine_alive
        self.failed = False  # a worker or the engine ended before SIGTERM or SIGINT

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        if not self._engine_alive():
            self._stop_all("the shared vLLM engine ended")
            return
        for worker in self.processes:
            if not worker.is_alive(timeout=self.config.timeout_worker_healthcheck):
                if worker.process.is_alive():
                    worker.kill()  # hung: it answered no health check
                    worker.join()
                self._stop_all(f"gateway process {worker.pid} ended (exit code {worker.exitcode})")
                return

    def _stop_all(self, why: str) -> None:
        log.error("%s: stopping every gateway process (the engine takes no new one); restart the gateway", why)
        self.failed = True
        self.should_exit.set()

    def handle_hup(self) -> None:
        log.warning("SIGHUP ignored: gateway processes that share an engine are not restarted one by one")

    def handle_ttin(self) -> None:
        log.warning("SIGTTIN ignored: the shared engine was started for %d gateway processes", self.processes_num)

    def handle_ttou(self) -> None:
        self.handle_ttin()


@contextmanager
def _signals_end_the_start() -> Iterator[None]:
    """SIGTERM and SIGINT raise SystemExit while the engine starts, so that it is stopped too.

    The supervisor installs handlers of its own once the engine is ready.
    """

    def end(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, end) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def create_worker_app() -> FastAPI:
    """The app of one worker process: settings from the environment, a log slot, its share of the GPU."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for noisy in ("kafka", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = load_settings()
    processes, wal_dir = settings.gateway.processes, settings.gateway.wal.dir
    slot, held = claim_slot(wal_dir, processes)
    PROCESS.set(slot)
    log.info("gateway process %d of %d (pid %d): write-ahead log %s", slot, processes, os.getpid(), held.directory)

    from services.gateway.app import create_app, load_backend  # here, not above: the supervisor imports no model code

    engine = SharedEngine.from_environment()
    mine = process_settings(settings, held.directory)
    backend = None if engine is None else load_backend(mine, shared=engine.client(slot))
    app = create_app(mine, backend)
    app.state.wal_slot = held  # held for the process's lifetime
    app.add_middleware(ProcessHeader, slot=slot)
    replay_leftovers(app, settings, leftovers(wal_dir, processes))
    if settings.gateway.backend == "vllm" and engine is None:
        start_one_at_a_time(app, wal_dir / ENGINE_START_LOCK)
    return app


def create_single_app(settings: Settings) -> FastAPI:
    """The app of a gateway of one process: it holds ``gateway.wal.dir`` itself and replays any slot left there."""
    from services.gateway.app import create_app

    wal_dir = settings.gateway.wal.dir
    held = hold(wal_dir)
    if held is None:
        raise WalError(f"another gateway process writes the write-ahead log {wal_dir}; give this one its own")
    app = create_app(settings)
    app.state.wal_slot = held
    replay_leftovers(app, settings, leftovers(wal_dir, 1))
    return app


def process_settings(settings: Settings, wal_dir: Path) -> Settings:
    """``settings`` for one of ``gateway.processes`` processes: its own log directory, its share of the GPU.

    The share is what an engine the process starts itself takes: its own, or, beside a shared engine, one
    for a challenger on another base model.
    """
    gateway = settings.gateway
    share = gateway.vllm.gpu_memory_utilization / gateway.processes
    vllm = gateway.vllm.model_copy(update={"gpu_memory_utilization": share})
    wal = gateway.wal.model_copy(update={"dir": wal_dir})
    return settings.model_copy(update={"gateway": gateway.model_copy(update={"vllm": vllm, "wal": wal})})


def replay_leftovers(app: FastAPI, settings: Settings, directories: list[Path]) -> None:
    """Replay ``directories`` (leftover logs) while the app runs, from its start to its end."""
    if not directories:
        return

    async def run(stack: AsyncExitStack) -> None:
        drain = LeftoverLogs(settings, directories)
        await asyncio.to_thread(drain.start)
        stack.push_async_callback(asyncio.to_thread, drain.close)

    _around_startup(app, run)


def start_one_at_a_time(app: FastAPI, lock_path: Path) -> None:
    """Hold ``lock_path`` exclusively through the app's startup, so that the gateway's processes start in turn."""

    async def run(stack: AsyncExitStack) -> None:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        stack.callback(os.close, fd)  # closing it drops the lock, once the startup below is done
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)

    _around_startup(app, run, release_after_startup=True)


Before = Callable[[AsyncExitStack], Awaitable[None]]


def _around_startup(app: FastAPI, before: Before, *, release_after_startup: bool = False) -> None:
    """Wrap the app's lifespan in ``before(stack)``, whose stack unwinds after the startup or after the shutdown."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as outer:
            guard = await outer.enter_async_context(AsyncExitStack())
            await before(guard)
            await outer.enter_async_context(inner(application))
            if release_after_startup:
                await guard.aclose()
            yield

    app.router.lifespan_context = lifespan


class ProcessHeader:
    """ASGI middleware: every HTTP response names the process that made it (``X-Flywheel-Process: <slot>``)."""

    def __init__(self, app: ASGIApp, slot: int) -> None:
        self._app = app
        self._header = (PROCESS_HEADER.lower().encode(), str(slot).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self._header]
            await send(message)

        await self._app(scope, receive, marked)
