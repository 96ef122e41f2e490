"""Run :class:`SharedEngineSupervisor` over two small workers and a stand-in engine (a fake: a sleeping process).

``python shared_supervisor_run.py PORT ENGINE_PID_FILE``: binds PORT, starts the stand-in engine and writes its
pid to ENGINE_PID_FILE, supervises two workers whose ``/`` answers their pid, and exits 1 if the supervisor
stopped because a worker or the engine ended, 0 after SIGTERM or SIGINT. Used by test_shared_engine.py: the
supervision needs no GPU, only processes.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from services.gateway.processes import SharedEngineSupervisor


def pid_app() -> FastAPI:
    """A worker's app: ``/`` answers the worker's pid."""
    app = FastAPI()
    app.get("/")(lambda: {"pid": os.getpid()})
    return app


def main(port: int, engine_pid_file: Path) -> int:
    engine = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(3600,), name="fake-engine")
    engine.start()
    engine_pid_file.write_text(str(engine.pid))
    config = uvicorn.Config(
        "shared_supervisor_run:pid_app", factory=True, port=port, workers=2, timeout_worker_healthcheck=5
    )
    supervisor = SharedEngineSupervisor(config, [config.bind_socket()], engine.is_alive)
    try:
        supervisor.run()
    finally:
        engine.terminate()
        engine.join()
    return 1 if supervisor.failed else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), Path(sys.argv[2])))
