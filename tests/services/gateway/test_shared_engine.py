"""Gateway processes that share one vLLM engine: what needs no GPU (ids, addresses, bounds, supervision).

The engine itself, with two clients on it, is tested on a GPU (tests/gpu/test_vllm_shared_engine.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import httpx
import pytest
from pipeline_events import process_ended, wait_until

from feedback.errors import ModelError
from feedback.settings import GatewaySettings, Settings, VLLMSettings
from services.cli.ports import free_port
from services.gateway.app import load_backend
from services.gateway.scheduler import Overloaded, ShadowShed
from services.gateway.shared_engine import ENV, AdapterIds, SharedEngine, shares_engine
from services.gateway.vllm_backend import VLLMBackend

SUPERVISED = Path(__file__).with_name("shared_supervisor_run.py")
VERSIONS = [f"{n:064x}" for n in range(12)]


def ids_of(path: Path, versions: list[str]) -> list[int]:
    """The ids one process gets for ``versions``, asked in that order."""
    ids = AdapterIds(path)
    return [ids.id_of(version) for version in versions]


def test_every_process_gets_the_same_id_for_a_version_and_no_two_versions_share_one(tmp_path: Path) -> None:
    path = tmp_path / "lora-ids.json"
    AdapterIds(path).reset()
    orders = [VERSIONS, VERSIONS[::-1], VERSIONS[3:] + VERSIONS[:3], VERSIONS[::2] + VERSIONS[1::2]]
    with ProcessPoolExecutor(len(orders), mp_context=get_context("spawn")) as pool:
        answers = list(pool.map(ids_of, [path] * len(orders), orders))
    mapping = {
        version: id_
        for order, ids in zip(orders, answers, strict=True)
        for version, id_ in zip(order, ids, strict=True)
    }
    for order, ids in zip(orders, answers, strict=True):
        assert ids == [mapping[version] for version in order]  # each process saw the same mapping
    assert sorted(mapping.values()) == list(range(1, len(VERSIONS) + 1))  # 1..12, none twice


def test_a_new_engine_starts_the_ids_afresh(tmp_path: Path) -> None:
    ids = AdapterIds(tmp_path / "lora-ids.json")
    ids.reset()
    assert [ids.id_of(VERSIONS[0]), ids.id_of(VERSIONS[1]), ids.id_of(VERSIONS[0])] == [1, 2, 1]
    ids.reset()
    assert ids.id_of(VERSIONS[1]) == 1


def test_each_process_finds_its_own_addresses_in_the_environment() -> None:
    engine = SharedEngine(
        "/models/m", ["ipc:///tmp/in-0", "ipc:///tmp/in-1"], ["ipc:///tmp/out-0", "ipc:///tmp/out-1"], "/w/ids"
    )
    found = SharedEngine.from_environment({ENV: engine.to_environment()})
    assert found == engine
    client = engine.client(1)
    assert (client.index, client.count, client.model_dir, client.adapter_ids) == (
        1,
        2,
        Path("/models/m"),
        Path("/w/ids"),
    )
    assert client.addresses() == {"input_address": "ipc:///tmp/in-1", "output_address": "ipc:///tmp/out-1"}
    assert SharedEngine.from_environment({}) is None
    with pytest.raises(ModelError, match=r"gateway process 2 has no place on the shared engine, .* for 2 processes"):
        engine.client(2)


def test_a_process_whose_model_is_not_the_engines_is_refused(model_dir: Path, tmp_path: Path) -> None:
    """The engine was started on the parent's model; a process configured with another would name adapters of
    one base model to an engine serving another."""
    settings = Settings(gateway=GatewaySettings(backend="vllm"))
    elsewhere = SharedEngine(str(tmp_path / "other-model"), ["a"], ["b"], str(tmp_path / "ids"))
    with pytest.raises(ModelError, match=r"the shared vLLM engine serves '.*other-model', but this process's model"):
        load_backend(settings, shared=elsewhere.client(0))


@pytest.mark.parametrize(
    ("processes", "backend", "shared", "expected"),
    [(2, "vllm", True, True), (1, "vllm", True, False), (2, "transformers", True, False), (2, "vllm", False, False)],
)
def test_only_several_vllm_processes_share_an_engine(
    processes: int, backend: str, shared: bool, expected: bool
) -> None:
    settings = Settings(gateway=GatewaySettings(backend=backend, vllm=VLLMSettings(shared_engine=shared)))  # type: ignore[arg-type]
    assert shares_engine(settings, processes) is expected


def test_a_process_holds_its_part_of_the_engines_bounds(model_dir: Path) -> None:
    """Of 4 processes, each admits ceil((8 + 6) / 4) = 4 served requests and ceil((3 + 2) / 4) = 2 shadow copies."""
    engine = SharedEngine(str(model_dir), ["a", "b", "c", "d"], ["e", "f", "g", "h"], "ids")
    settings = GatewaySettings(
        vllm=VLLMSettings(max_num_seqs=8), max_queued_requests=6, shadow_queue_size=3, shadow_concurrency=2
    )
    backend = VLLMBackend(model_dir, settings, shared=engine.client(0))
    alone = VLLMBackend(model_dir, settings)

    async def admitted(backend: VLLMBackend, role: str, refused: type[Exception]) -> int:
        """How many of 100 requests at once get a place (a shadow copy may wait for a slot in its place)."""
        release = asyncio.Event()

        async def hold() -> None:
            async with backend._admitted(role):  # type: ignore[arg-type]
                await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(100)]
        await asyncio.sleep(0.05)
        release.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(o is None or isinstance(o, refused) for o in outcomes)
        return sum(o is None for o in outcomes)

    async def counts() -> list[int]:
        return [
            await admitted(backend, "served", Overloaded),
            await admitted(backend, "shadow", ShadowShed),
            await admitted(alone, "served", Overloaded),
            await admitted(alone, "shadow", ShadowShed),
        ]

    assert asyncio.run(counts()) == [4, 2, 14, 5]


def supervised_pids(port: int) -> set[int]:
    """The pids of the workers that answered, asking on a new connection each time (empty until they serve)."""
    seen = set()
    for _ in range(20):
        try:
            seen.add(httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["pid"])
        except httpx.TransportError:
            return set()
    return seen


@pytest.mark.parametrize("ending", ["engine", "worker", "sigterm"])
def test_when_the_engine_or_a_process_ends_every_process_stops_and_the_exit_says_why(
    ending: str, tmp_path: Path
) -> None:
    port, engine_pid = free_port(), tmp_path / "engine.pid"
    log = tmp_path / "supervisor.log"
    with log.open("w") as out:
        supervisor = subprocess.Popen(
            [sys.executable, str(SUPERVISED), str(port), str(engine_pid)],
            env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        workers: set[int] = set()

        def both_serve() -> bool:
            workers.update(supervised_pids(port))
            return len(workers) == 2

        wait_until(both_serve, 60, "both workers to serve")
        victim = {"engine": lambda: int(engine_pid.read_text()), "worker": lambda: min(workers)}
        if ending == "sigterm":
            os.kill(supervisor.pid, signal.SIGTERM)
        else:
            os.kill(victim[ending](), signal.SIGKILL)
        code = supervisor.wait(timeout=60)
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
    for pid in workers:
        wait_until(lambda p=pid: process_ended(p), 30, f"worker {pid} to end")
    text = log.read_text()
    why = {"engine": "the shared vLLM engine ended", "worker": f"gateway process {min(workers)} ended (exit code -9)"}
    if ending == "sigterm":
        assert code == 0
        assert "stopping every gateway process" not in text
    else:
        assert code == 1
        assert (
            f"{why[ending]}: stopping every gateway process (the engine takes no new one); restart the gateway" in text
        )
