"""The backends that serve model versions: those the gateway started with, and bases loaded on demand.

A model version is ``<base>`` or ``<base>+<adapter version>``. The backends given at start (the
champion's configured model, any extra ones) are pinned. A version whose base none of them serves
names its base by a model source, as ``model.source`` does (the default model's name, a GGUF file
or a Hugging Face model directory; a path must not contain ``+``): the pool loads that base in a
thread, on its own model instance, while serving goes on, and releases it once no deployed
version uses it. Loading and loaded bases show in ``/readyz`` and ``/metrics``; failed loads are
counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from feedback.deployments import split_version
from services.gateway.backend import InferenceBackend
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

OpenBase = Callable[[str], InferenceBackend]
"""Loads the base model named by a model source into a new backend (blocking; run in a thread)."""


class BackendPool:
    """Finds the backend of a model version; loads and releases bases that no pinned backend serves."""

    def __init__(self, pinned: Sequence[InferenceBackend], open_base: OpenBase | None = None) -> None:
        self._pinned = list(pinned)
        self._open_base = open_base
        self._loaded: dict[str, InferenceBackend] = {}
        self._loading: dict[str, asyncio.Task[InferenceBackend]] = {}
        self._metrics: GatewayMetrics | None = None

    @property
    def loaded(self) -> list[str]:
        """Bases loaded on demand and serving now."""
        return sorted(self._loaded)

    @property
    def loading(self) -> list[str]:
        """Bases being loaded now."""
        return sorted(self._loading)

    async def start(self, metrics: GatewayMetrics) -> None:
        """Start the pinned backends."""
        self._metrics = metrics
        for backend in self._pinned:
            await backend.start(metrics)

    async def close(self) -> None:
        """Stop every backend, pinned or loaded; cancel loads in progress."""
        for task in self._loading.values():
            task.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        for backend in [*self._pinned, *self._loaded.values()]:
            await backend.close()
        self._loaded.clear()

    def backend_for(self, model_version: str) -> InferenceBackend:
        """The backend that serves ``model_version``; LookupError when none does (yet)."""
        for backend in self._pinned:
            if backend.serves(model_version):
                return backend
        base = split_version(model_version)[0]
        if base in self._loaded:
            return self._loaded[base]
        state = "is still loading" if base in self._loading else "is not loaded"
        raise LookupError(f"no backend serves model version {model_version!r}: base model {base!r} {state}")

    async def load(self, model_version: str) -> None:
        """Make ``model_version`` servable: its base (loaded once, concurrent callers share it), then its adapter."""
        try:
            if not any(backend.serves(model_version) for backend in self._pinned):
                await self._load_base(split_version(model_version)[0])
            await self.backend_for(model_version).load(model_version)
        except Exception:
            if self._metrics is not None:
                self._metrics.load_failures.inc()
            raise

    async def retain(self, model_versions: Iterable[str | None]) -> None:
        """Release every base loaded on demand that none of ``model_versions`` uses."""
        used = {split_version(version)[0] for version in model_versions if version}
        for base in [b for b in self._loaded if b not in used]:
            backend = self._loaded.pop(base)
            log.info("releasing base model %s", base)
            await backend.close()
        self._count()

    async def _load_base(self, base: str) -> None:
        if base in self._loaded:
            return
        if self._open_base is None:
            raise LookupError(f"no backend serves base model {base!r} and this gateway loads no other bases")
        task = self._loading.get(base)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(base, self._open_base))
            self._loading[base] = task
            task.add_done_callback(lambda done: self._done_loading(base, done))
            self._count()
        await asyncio.shield(task)

    async def _open(self, base: str, open_base: OpenBase) -> InferenceBackend:
        if self._metrics is None:
            raise RuntimeError("the backend pool is not started")
        log.info("loading base model %s", base)
        backend = await asyncio.to_thread(open_base, base)
        await backend.start(self._metrics)
        self._loaded[base] = backend
        return backend

    def _done_loading(self, base: str, task: asyncio.Task[InferenceBackend]) -> None:
        self._loading.pop(base, None)
        self._count()
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone away (cancelled)

    def _count(self) -> None:
        if self._metrics is not None:
            self._metrics.bases.labels(state="loading").set(len(self._loading))
            self._metrics.bases.labels(state="loaded").set(len(self._loaded))
