"""One vLLM engine fed by several gateway processes (``gateway.processes`` N > 1, ``gateway.vllm.shared_engine``).

A gateway process whose event loop is busy with auth, the content filter, routing and events leaves the
GPU waiting; N processes with an engine each time-share the GPU in N small batches. So, as vLLM's own
``--api-server-count`` does, the parent process of ``flywheel gateway --processes N`` starts **one**
engine core (vLLM's ``launch_core_engines``: its own process, the whole ``gpu_memory_utilization``) before
it starts the gateway processes, and each process talks to it through an ``AsyncLLM`` client on a pair of
ZeroMQ addresses of its own (:class:`EngineClient`). Served and shadow requests of every process then
share one batch.

What changes for the processes:

- **Adapters.** An adapter's LoRA id must mean the same adapter in every process: ids come from one file
  beside the write-ahead logs (:class:`AdapterIds`, under an exclusive lock), made afresh with the engine.
  Each process adds an adapter it is asked for; the engine keeps one copy.
- **Bounds.** The served-request bound (``max_num_seqs + max_queued_requests``) and the shadow bounds are
  the engine's, shared out among the N processes.
- **No restarts.** The engine greets each client once, when it starts, so a process that ended cannot be
  replaced by a new one on its addresses. When a gateway process or the engine ends, the parent stops the
  others and exits non-zero, for a service manager to restart the whole gateway (README).

The parent hands the engine's addresses to the processes in one environment variable (:data:`ENV`), read
by :meth:`SharedEngine.from_environment`. vLLM is imported only by :func:`launch`, so this module imports
anywhere.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from feedback.errors import ModelError
from feedback.model.source import prepare_model
from feedback.settings import Settings

log = logging.getLogger(__name__)

ENV = "FLYWHEEL_GATEWAY_SHARED_ENGINE"  # the parent's SharedEngine, as JSON, for its gateway processes
ADAPTER_IDS_FILE = "lora-ids.json"  # in gateway.wal.dir: adapter version -> LoRA id, for one engine's lifetime


def shares_engine(settings: Settings, processes: int) -> bool:
    """Whether ``processes`` gateway processes with ``settings`` feed one shared vLLM engine."""
    gateway = settings.gateway
    return processes > 1 and gateway.backend == "vllm" and gateway.vllm.shared_engine


@dataclass(frozen=True)
class EngineClient:
    """What one gateway process needs to use the shared engine."""

    index: int  # this process's client number, 0 .. count - 1
    count: int  # the processes that share the engine
    input_address: str  # ZeroMQ: requests to the engine (this process binds it)
    output_address: str  # ZeroMQ: the engine's outputs for this process (this process binds it)
    model_dir: Path  # the base model the engine serves
    adapter_ids: Path  # the shared adapter id file (AdapterIds)

    def addresses(self) -> dict[str, str]:
        """vLLM's ``client_addresses`` for ``AsyncLLM.from_vllm_config``."""
        return {"input_address": self.input_address, "output_address": self.output_address}

    def share(self, total: int) -> int:
        """This process's part of a bound the engine has in all: ``total`` over the processes, rounded up."""
        return -(-total // self.count)


@dataclass(frozen=True)
class SharedEngine:
    """A running engine's addresses: one input and one output address per gateway process."""

    model_dir: str
    inputs: list[str]
    outputs: list[str]
    adapter_ids: str

    def to_environment(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> SharedEngine | None:
        """The engine the parent started (:data:`ENV`), or None when this process runs its own."""
        text = (os.environ if environ is None else environ).get(ENV)
        if not text:
            return None
        fields = json.loads(text)
        return cls(fields["model_dir"], list(fields["inputs"]), list(fields["outputs"]), fields["adapter_ids"])

    def client(self, index: int) -> EngineClient:
        """The addresses of gateway process ``index``; a ModelError past the processes the engine was started for."""
        if not 0 <= index < len(self.inputs):
            raise ModelError(
                f"gateway process {index} has no place on the shared engine, which was started for"
                f" {len(self.inputs)} processes"
            )
        return EngineClient(
            index=index,
            count=len(self.inputs),
            input_address=self.inputs[index],
            output_address=self.outputs[index],
            model_dir=Path(self.model_dir),
            adapter_ids=Path(self.adapter_ids),
        )


class AdapterIds:
    """Adapter version -> LoRA id, the same in every process of one engine: a JSON file under an exclusive lock.

    A version gets the next unused id the first time any process asks; ids are never reused while the file
    lives, so a new version never meets an id the engine has cached for another.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def reset(self) -> None:
        """Start afresh (a new engine holds no adapter yet)."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as ids:
            ids.clear()

    def id_of(self, version: str) -> int:
        """``version``'s id, assigned now if no process has asked for it before (blocking file I/O)."""
        with self._locked() as ids:
            if version not in ids:
                ids[version] = max(ids.values(), default=0) + 1
            return ids[version]

    @contextmanager
    def _locked(self) -> Iterator[dict[str, int]]:
        """The mapping, read under the file's lock and written back when the block ends."""
        with open(self._path, "a+", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            text = file.read()
            ids: dict[str, int] = json.loads(text) if text else {}
            before = dict(ids)
            yield ids
            if ids != before:
                file.seek(0)
                file.truncate()
                file.write(json.dumps(ids))
                file.flush()
                os.fsync(file.fileno())


@contextmanager
def launch(settings: Settings, processes: int) -> Iterator[tuple[SharedEngine, Callable[[], bool]]]:
    """Start the engine core for ``processes`` gateway processes: its addresses and a liveness check.

    Returns once the engine has loaded the model and is ready (minutes with compilation); stops it when
    the block ends. A ModelError when vLLM is missing or the engine cannot start.
    """
    from services.gateway.vllm_backend import INSTALL_HINT, VLLMBackend

    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # the gateway processes run threads
    try:
        from vllm import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.utils import get_engine_zmq_addresses, launch_core_engines
        from vllm.v1.executor import Executor
    except ImportError as exc:
        raise ModelError(f"{INSTALL_HINT}: {exc}") from exc
    model_dir = prepare_model(settings.model.source, settings.model.cache_dir)
    args = AsyncEngineArgs(**VLLMBackend(model_dir, settings.gateway).engine_arguments())
    args._api_process_count, args._api_process_rank = processes, -1  # as vLLM's api-server-count: the engine
    adapter_ids = settings.gateway.wal.dir / ADAPTER_IDS_FILE
    AdapterIds(adapter_ids).reset()
    try:
        config = args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        addresses = get_engine_zmq_addresses(config, processes)
        # log_stats: the engine reports every step's statistics, which each process's step logger reads
        with launch_core_engines(config, Executor.get_class(config), True, addresses, processes) as started:
            manager, _coordinator, addresses, _tensors = started
    except Exception as exc:  # vLLM raises many kinds while it starts (config, CUDA, memory)
        raise ModelError(f"the shared vLLM engine could not start on {str(model_dir)!r}: {exc}") from exc
    if manager is None:
        raise ModelError("vLLM started no local engine process")
    engine = SharedEngine(str(model_dir), list(addresses.inputs), list(addresses.outputs), str(adapter_ids))
    log.info("shared vLLM engine ready for %d gateway processes (pid %s)", processes, _pids(manager))
    try:
        yield engine, lambda: _alive(manager)
    finally:
        manager.shutdown()


def _alive(manager: Any) -> bool:
    return all(process.is_alive() for process in manager.processes)


def _pids(manager: Any) -> str:
    return ", ".join(str(process.pid) for process in manager.processes)
