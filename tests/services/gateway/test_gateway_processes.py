"""``flywheel gateway --processes 2``: two processes on one port, on the real broker and the real default model.

Every response names the process that made it (``X-Flywheel-Process``); each process writes a log slot
of its own and holds its lock; every interaction reaches Kafka once. A process killed with SIGKILL is
replaced by the supervisor, and its replacement claims the slot it left and serves.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from api_keys import Keys, bearer, gateway_process_env
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pipeline_events import topic_events, wait_until
from test_wal_slots import file_locked, is_locked, write_log

from feedback.events import InteractionEvent
from feedback.settings import KafkaSettings, Settings
from services.cli.ports import free_port
from services.cli.processes import service_process
from services.gateway.processes import ProcessHeader, replay_leftovers, start_one_at_a_time
from services.gateway.wal_slots import LOCK_FILE, leftovers

REQUESTS = 12
MORE = 20  # at most this many more, one at a time, until both processes have answered a chat


def owner(slot: Path) -> int | None:
    """The pid a slot's lock file names (None while its owner is writing it)."""
    text = (slot / LOCK_FILE).read_text().strip() if (slot / LOCK_FILE).exists() else ""
    return int(text) if text else None


def held_by_a_worker(slot: Path, supervisor: int) -> int:
    """The pid of the process holding ``slot``: a child of the supervisor, holding the slot's lock."""
    pid = owner(slot)
    assert pid is not None
    assert parent_of(pid) == supervisor
    assert is_locked(slot)
    return pid


def parent_of(pid: int) -> int:
    """The parent process id of ``pid`` (from /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def chat(n: int) -> dict[str, object]:
    return {"model": "flywheel", "messages": [{"role": "user", "content": f"Say hello to {n}."}]} | {
        "max_tokens": 4,
        "temperature": 0,
        "user": f"user-{n}",
    }


async def chats(url: str, key: str, numbers: range) -> list[httpx.Response]:
    """The chats ``numbers`` at once, each on a connection of its own (the kernel hands connections out)."""
    async with httpx.AsyncClient(headers=bearer(key), timeout=120) as client:
        return list(await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json=chat(n)) for n in numbers)))


def both_ready(url: str) -> bool:
    """Whether both processes answered /readyz 200, asking on new connections until both did (or 20 tries)."""
    seen = set()
    for _ in range(20):
        response = httpx.get(f"{url}/readyz", timeout=10)
        if response.status_code == 200:
            seen.add(response.headers["X-Flywheel-Process"])
    return seen == {"0", "1"}


@pytest.mark.kafka
@pytest.mark.model
def test_two_processes_share_the_port_with_a_log_each_and_a_killed_one_comes_back(
    kafka_isolated: KafkaSettings, api_keys: Keys, tmp_path: Path
) -> None:
    wal = tmp_path / "wal"
    slots = [wal / "process-0", wal / "process-1"]
    env = gateway_process_env(kafka_isolated, tmp_path, tmp_path / "registry")
    with service_process("gateway", tmp_path, env, ["--processes", "2"], ready=both_ready) as gateway:
        responses = asyncio.run(chats(gateway.url, api_keys["user"], range(REQUESTS)))
        n = REQUESTS
        while {r.headers["X-Flywheel-Process"] for r in responses} != {"0", "1"} and n < REQUESTS + MORE:
            responses += asyncio.run(chats(gateway.url, api_keys["user"], range(n, n + 1)))
            n += 1
        assert [r.status_code for r in responses] == [200] * n
        assert {r.headers["X-Flywheel-Process"] for r in responses} == {"0", "1"}

        ids = sorted(r.headers["X-Interaction-Id"].split(".")[0] for r in responses)
        events = topic_events(kafka_isolated.bootstrap_servers, kafka_isolated.topics.interactions, n)
        assert all(isinstance(e, InteractionEvent) for e in events)
        assert sorted(e.interaction_id for e in events if isinstance(e, InteractionEvent)) == ids  # each once

        assert sorted(path.name for path in wal.iterdir()) == ["process-0", "process-1"]
        assert all(any(slot.glob("*.wal")) for slot in slots)  # each logged the events it made
        first, second = (held_by_a_worker(slot, gateway.pid) for slot in slots)

        os.kill(first, signal.SIGKILL)
        wait_until(lambda: owner(slots[0]) not in (None, first), 120, "a new process to claim slot 0")
        replacement = held_by_a_worker(slots[0], gateway.pid)
        assert held_by_a_worker(slots[1], gateway.pid) == second
        assert sorted(path.name for path in wal.iterdir()) == ["process-0", "process-1"]
        wait_until(lambda: both_ready(gateway.url), 120, "the new process to serve beside the other")
    for pid in (replacement, second):
        wait_until(lambda p=pid: not Path(f"/proc/{p}").exists(), 30, f"process {pid} to end")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--processes", "0"], {}, "Invalid value for '--processes': Input should be greater than or equal to 1"),
        ([], {"FLYWHEEL_GATEWAY__PROCESSES": "0"}, "gateway.processes: Input should be greater than or equal to 1"),
    ],
)
def test_fewer_than_one_process_is_refused_with_exit_2(args: list[str], env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "gateway", *args],
        env=os.environ | env | {"COLUMNS": "200"},  # the usage error's box unwrapped
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())


def held(path: Path) -> bool:
    """Whether some open file description holds the lock of ``path``: a lock file, or a log directory's."""
    return is_locked(path) if path.is_dir() else file_locked(path)


def app_with_startup(seen: dict[str, bool], probe: Path) -> FastAPI:
    """An app whose lifespan notes, at its startup and at its shutdown, whether ``probe`` is held."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        seen["startup"] = held(probe)
        yield
        seen["shutdown"] = held(probe)

    app = FastAPI(lifespan=lifespan)
    app.get("/")(lambda: {"ok": True})
    return app


def test_engines_start_one_at_a_time_and_the_lock_goes_once_started(tmp_path: Path) -> None:
    lock = tmp_path / "engine-start.lock"
    seen: dict[str, bool] = {}
    app = app_with_startup(seen, lock)
    start_one_at_a_time(app, lock)
    with TestClient(app) as client:
        assert not held(lock)  # started: the next process may start its engine
        assert client.get("/").json() == {"ok": True}
    assert seen == {"startup": True, "shutdown": False}


def test_leftover_logs_are_held_while_the_app_runs_and_let_go_at_its_end(tmp_path: Path) -> None:
    leftover = tmp_path / "process-2"
    write_log(leftover, "interactions", 2)
    settings = Settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}", "bootstrap_timeout_ms": 200},
        gateway={"wal": {"dir": tmp_path}, "drain_timeout_s": 0},
    )
    seen: dict[str, bool] = {}
    app = app_with_startup(seen, leftover)
    replay_leftovers(app, settings, leftovers(tmp_path, 2))
    with TestClient(app):
        assert is_locked(leftover)  # Kafka is away: it is still being replayed
    assert seen == {"startup": True, "shutdown": True}
    assert not is_locked(leftover)
    assert len(list(leftover.glob("*.wal"))) == 1  # its events wait for the next start


def test_every_response_names_its_process() -> None:
    app = FastAPI()
    app.get("/")(lambda: {"ok": True})
    app.add_middleware(ProcessHeader, slot=3)
    with TestClient(app) as client:
        response = client.get("/")
        missing = client.get("/missing")
    assert (response.headers["X-Flywheel-Process"], missing.headers["X-Flywheel-Process"]) == ("3", "3")
