"""The vLLM backend: one base model on a CUDA GPU, every adapter version a LoRA of it, batched by vLLM.

vLLM's in-process async engine (``AsyncLLM``, the v1 engine, whose engine core runs in a spawned
process) serves the base model with LoRA enabled, so served and shadow requests of the champion and
the challenger share its batches whatever adapter each names. With several gateway processes, each one's
``AsyncLLM`` is a client of one engine core that the gateway's parent started
(:mod:`services.gateway.shared_engine`), so every process's requests share its batches. It keeps the
transformers backend's promises (:mod:`services.gateway.backend`):

- **Prompts** are rendered with the model's chat template by our own tokenizer
  (:func:`feedback.model.runtime.render_chat`) and sent as token ids, so both backends see the same
  tokens; a prompt plus ``max_tokens`` beyond the context is refused before it reaches the engine.
- **Numbers.** vLLM returns the raw log-probability of each sampled token (``logprobs_mode`` of
  ``raw_logprobs``: the log-softmax of the model's logits before temperature, top-p or penalties).
  Where the completion ends, its text and its confidence follow :mod:`feedback.model.completion`,
  as in every backend; the end-of-sequence ids are the transformers runtime's.
- **Adapters.** A version ``<base>+<adapter>`` is fetched from the registry by its hash (verified)
  and given a ``LoRARequest`` with an id of its own that is never reused, so a new version never
  meets a cached one (with a shared engine the id comes from the file all its processes share). vLLM
  keeps ``max_loras`` adapters on the GPU and ``max_cpu_loras`` in host memory, dropping the least
  recently used, and reloads a dropped one from its registry directory when a request names it again:
  versions come and go while serving, with nothing to unload.
- **Shadow copies** join the served requests' batches by default. With ``vllm.shadow_engine`` they run on
  a second engine of their own on the same GPU instead (the two split the memory share), so they never
  make a served request's batch bigger; each engine gets every adapter version loaded.
- **Served first.** Requests are scheduled by priority (served before shadow copies); at most
  ``shadow_concurrency`` shadow copies run and ``shadow_queue_size`` wait (more are shed); served
  requests beyond ``max_num_seqs + max_queued_requests`` are refused (:class:`Overloaded`, a 429); with
  a shared engine each process holds its part of these bounds.
- **Streaming** sends each new piece of text to ``on_text`` as the transformers backend does,
  holding back half characters and what may be the start of a stop string.
- **Metrics**: rows in each engine step (``flywheel_batch_size``), requests not yet started per role
  (``flywheel_queue_depth``), refused requests.

vLLM is an optional extra for CUDA machines (infra/gpu/install.sh). It is imported when the backend
starts, so this module imports anywhere.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from feedback.deployments import split_version
from feedback.errors import ModelError
from feedback.events import Role
from feedback.model.batch import TextCallback
from feedback.model.completion import Decode, confidence, find_ending, first_stop
from feedback.model.rows import streamable
from feedback.model.runtime import Generation, SamplingParams, eos_ids, model_name
from feedback.registry import AdapterRegistry
from feedback.settings import GatewaySettings
from services.gateway.backend import GenerationRequest, render_prompt
from services.gateway.metrics import GatewayMetrics
from services.gateway.scheduler import Overloaded, ShadowShed
from services.gateway.shared_engine import AdapterIds, EngineClient

INSTALL_HINT = "the vLLM backend needs a CUDA GPU and the optional extra installed by infra/gpu/install.sh"
PRIORITY: dict[Role, int] = {"served": 0, "shadow": 1}  # vLLM schedules lower values first


def available() -> bool:
    """Whether vLLM is installed and a CUDA GPU is visible (vLLM itself is not imported)."""
    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


class VLLMBackend:
    """A vLLM engine serving one base model and its LoRA adapter versions (see the module docstring)."""

    def __init__(
        self,
        model_dir: Path,
        settings: GatewaySettings | None = None,
        registry: AdapterRegistry | None = None,
        *,
        shared: EngineClient | None = None,
    ) -> None:
        """``shared``: use the engine that the gateway's parent process started (services.gateway.shared_engine)
        instead of starting one; it must serve ``model_dir``, whose adapters this backend names to it."""
        if shared is not None and shared.model_dir.resolve() != model_dir.resolve():
            served, mine = str(shared.model_dir), str(model_dir)
            raise ModelError(f"the shared vLLM engine serves {served!r}, but this process's model is {mine!r}")
        self._model_dir = model_dir
        self._settings = settings or GatewaySettings()
        self._registry = registry
        self._shared = shared
        self._name = model_name(model_dir)
        self._tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        self._eos_ids = _eos_ids(model_dir, config, self._tokenizer.eos_token_id)
        # The transformers runtime's context length, so both backends refuse the same requests.
        native = int(getattr(config, "max_position_embeddings", 2048))
        self._context_length = min(native, self._settings.vllm.max_model_len or native)
        self._engines: dict[Role, Any] = {}  # the engine of each role: one for both, or one each (shadow_engine)
        self._loras: dict[str, Any] = {}  # adapter version -> its LoRARequest
        self._added: set[tuple[Role, str]] = set()  # (the role whose engine has it, adapter version)
        self._lora_ids: Callable[[str], int] = _counter() if shared is None else AdapterIds(shared.adapter_ids).id_of
        self._load_lock = asyncio.Lock()
        share = (lambda total: total) if shared is None else shared.share  # an engine's bounds, this process's part
        self._served_limit = share(self._settings.vllm.max_num_seqs + self._settings.max_queued_requests)
        self._shadow_limit = share(self._settings.shadow_queue_size + self._settings.shadow_concurrency)
        self._shadow_slots = asyncio.Semaphore(share(self._settings.shadow_concurrency))
        self._in_flight: dict[Role, int] = {"served": 0, "shadow": 0}
        self._waiting: dict[Role, int] = {"served": 0, "shadow": 0}  # admitted, no token yet
        self._metrics = GatewayMetrics()

    @property
    def base(self) -> str:
        """The base model's name."""
        return self._name

    @property
    def context_length(self) -> int:
        """Most tokens (prompt plus completion) a request may use."""
        return self._context_length

    @property
    def engine(self) -> Any:
        """The running ``AsyncLLM`` of served requests."""
        return self.engine_of("served")

    def engine_of(self, role: Role) -> Any:
        """The running ``AsyncLLM`` of ``role``'s requests: the served requests' unless ``shadow_engine``."""
        if role not in self._engines:
            raise RuntimeError("the backend is not started")
        return self._engines[role]

    async def start(self, metrics: GatewayMetrics) -> None:
        """Start the engine, or both (seconds each with ``enforce_eager``, minutes with compilation), one after
        the other without blocking the loop."""
        self._metrics = metrics
        served = shadow = await asyncio.to_thread(self._open_engine, metrics)
        if self._settings.vllm.shadow_engine:
            try:
                shadow = await asyncio.to_thread(self._open_engine, metrics)
            except BaseException:
                served.shutdown()  # not left holding its share of the GPU
                raise
        self._engines = {"served": served, "shadow": shadow}

    async def close(self) -> None:
        """Stop the engines and their processes; requests in flight fail.

        On the loop's thread, which owns the engines' sockets; it blocks until the engine processes end.
        """
        engines, self._engines = self._engines, {}
        for engine in {id(e): e for e in engines.values()}.values():
            engine.shutdown()

    def serves(self, model_version: str) -> bool:
        """Whether ``model_version`` runs on this backend's base model."""
        return split_version(model_version)[0] == self.base

    async def load(self, model_version: str) -> None:
        """Fetch (hash verified) and add the version's adapter to every engine, while serving; a no-op for
        the base."""
        for role in self._roles():
            await self._lora(model_version, role)

    def check(self, request: GenerationRequest) -> None:
        """Raise ContextLengthError when the prompt plus max_tokens does not fit the context."""
        self._prompt(request)

    async def generate(self, request: GenerationRequest) -> Generation:
        """Check the prompt against the context, then generate in the engine's shared batch."""
        prompt = self._prompt(request)
        lora = await self._lora(request.model_version, request.role)
        stream = _TextStream(request.on_text, request.params.stop, self._decode) if request.on_text else None
        async with self._admitted(request.role) as waiting:
            ids, logprobs = await self._run(prompt, request, lora, stream, waiting)
        ending = find_ending(ids, decode=self._decode, eos_ids=self._eos_ids, stop=request.params.stop)
        if stream is not None:
            stream.finish(ending.text)
        counted = tuple(logprobs[: ending.n_tokens])
        return Generation(
            text=ending.text,
            prompt_tokens=len(prompt),
            completion_tokens=ending.n_tokens,
            finish_reason=ending.finish_reason,
            confidence=confidence(counted),
            token_logprobs=counted,
            token_ids=tuple(ids[: ending.n_tokens]),
        )

    def _open_engine(self, metrics: GatewayMetrics) -> Any:
        # The gateway runs threads (Kafka clients, uvicorn): forking it for the engine core could deadlock.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ModelError(f"{INSTALL_HINT}: {exc}") from exc
        args = AsyncEngineArgs(**self.engine_arguments())
        loggers = [_step_logger(metrics)]
        try:
            if self._shared is None:
                return AsyncLLM.from_engine_args(args, stat_loggers=loggers)
            args._api_process_count, args._api_process_rank = self._shared.count, self._shared.index
            return AsyncLLM.from_vllm_config(
                args.create_engine_config(),
                stat_loggers=loggers,
                disable_log_stats=True,
                client_addresses=self._shared.addresses(),
                client_count=self._shared.count,
                client_index=self._shared.index,
            )
        except Exception as exc:  # vLLM raises many kinds while it starts (config, CUDA, memory)
            raise ModelError(f"vLLM could not start on {str(self._model_dir)!r}: {exc}") from exc

    def engine_arguments(self) -> dict[str, Any]:
        """The engine's arguments (vLLM's ``AsyncEngineArgs``) from the settings."""
        engine = self._settings.vllm
        return {
            "model": str(self._model_dir),
            "served_model_name": [self._name],
            "dtype": engine.dtype,
            "quantization": None if engine.quantization == "none" else engine.quantization,
            "max_model_len": self._context_length,
            "gpu_memory_utilization": engine.gpu_memory_utilization / (2 if engine.shadow_engine else 1),
            "max_num_seqs": engine.max_num_seqs,
            "enable_lora": True,
            "max_loras": engine.max_loras,
            "max_cpu_loras": engine.max_cpu_loras,
            "max_lora_rank": engine.max_lora_rank,
            "enforce_eager": engine.enforce_eager,
            "logprobs_mode": "raw_logprobs",
            "scheduling_policy": "priority",
            "generation_config": "vllm",  # no sampling defaults from the model: requests say everything
            "disable_log_stats": True,  # vLLM's own loggers; ours (``_step_logger``) still gets every step's statistics
        }

    def _roles(self) -> tuple[Role, ...]:
        """One role per engine: the role whose engine each adapter is added to."""
        return ("served", "shadow") if self._settings.vllm.shadow_engine else ("served",)

    async def _lora(self, model_version: str, role: Role) -> Any | None:
        """The version's ``LoRARequest``, added to ``role``'s engine first if it has not been; None for the base."""
        adapter = split_version(model_version)[1]
        if adapter is None:
            return None
        added = (role if role in self._roles() else "served", adapter)
        if added not in self._added:
            async with self._load_lock:
                if added not in self._added:
                    await self._add_lora(self.engine_of(role), model_version, adapter)
                    self._added.add(added)
        return self._loras[adapter]

    async def _add_lora(self, engine: Any, model_version: str, adapter: str) -> None:
        if adapter not in self._loras:
            if self._registry is None:
                raise ModelError(f"no adapter registry to load {model_version!r} from")
            path = await asyncio.to_thread(self._registry.fetch, adapter)
            from vllm.lora.request import LoRARequest

            lora_id = await asyncio.to_thread(self._lora_ids, adapter)
            self._loras[adapter] = LoRARequest(lora_name=adapter, lora_int_id=lora_id, lora_path=str(path))
        lora = self._loras[adapter]
        try:
            await engine.add_lora(lora)
        except Exception as exc:  # the engine reports a bad adapter (rank, modules) as a failed call
            raise ModelError(f"could not load adapter {adapter!r} from {lora.lora_path!r}: {exc}") from exc

    def _prompt(self, request: GenerationRequest) -> list[int]:
        return render_prompt(self._tokenizer, request, self._context_length)

    @asynccontextmanager
    async def _admitted(self, role: Role) -> AsyncIterator[_Waiting]:
        """Hold a place for one request of ``role``: refuse served overload, bound and shed shadow copies.

        A served request counts as waiting (``flywheel_queue_depth``) until its first token, or its end; a
        shadow copy until it has a shadow slot (it asks for its final output only: :meth:`_run`).
        """
        if role == "served":
            if self._in_flight["served"] >= self._served_limit:
                self._metrics.rejected.inc()
                raise Overloaded
        elif self._in_flight["shadow"] >= self._shadow_limit:
            raise ShadowShed
        self._in_flight[role] += 1
        self._count_waiting(role, +1)
        waiting = _Waiting(lambda: self._count_waiting(role, -1))
        try:
            if role == "shadow":
                async with self._shadow_slots:
                    waiting.end()
                    yield waiting
            else:
                yield waiting
        finally:
            waiting.end()
            self._in_flight[role] -= 1

    def _count_waiting(self, role: Role, change: int) -> None:
        self._waiting[role] += change
        self._metrics.queue_depth.labels(role=role).set(self._waiting[role])

    async def _run(
        self,
        prompt: list[int],
        request: GenerationRequest,
        lora: Any | None,
        stream: _TextStream | None,
        waiting: _Waiting,
    ) -> tuple[list[int], list[float]]:
        """Generate in the engine: the token ids and their raw log-probabilities, streaming as they come.

        A shadow copy (never streamed) asks vLLM for its final output alone: one wake-up of this loop per
        copy instead of one per engine step, so the copies cost the served requests less of the event loop.
        """
        ids: list[int] = []
        logprobs: list[float] = []
        try:
            outputs = self.engine_of(request.role).generate(
                {"prompt_token_ids": prompt},
                self._sampling(request.params, final_only=request.role == "shadow"),
                uuid.uuid4().hex,
                lora_request=lora,
                priority=PRIORITY[request.role],
            )
            async for output in outputs:
                waiting.end()
                completion = output.outputs[0]
                ids += completion.token_ids
                logprobs += _sampled_logprobs(completion.logprobs, completion.token_ids)
                if output.finished and completion.finish_reason == "abort":
                    raise ModelError("vLLM aborted the request")
                if stream is not None and not output.finished:
                    stream.update(ids)
        except (ModelError, asyncio.CancelledError):
            raise
        except Exception as exc:  # EngineDeadError, EngineGenerateError, a refused request
            raise ModelError(f"vLLM failed to generate: {type(exc).__name__}: {exc}") from exc
        return ids, logprobs

    def _sampling(self, params: SamplingParams, *, final_only: bool = False) -> Any:
        from vllm import SamplingParams as VLLMSampling
        from vllm.sampling_params import RequestOutputKind

        return VLLMSampling(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            top_k=0,  # no top-k: OpenAI semantics, as in the transformers backend
            seed=params.seed,
            stop=list(params.stop),
            stop_token_ids=sorted(self._eos_ids),
            # vLLM also stops at the tokenizer's EOS: ignore it when the runtime's ids leave it out
            ignore_eos=self._tokenizer.eos_token_id not in self._eos_ids,
            logprobs=0,  # the sampled token's log-probability only
            detokenize=bool(params.stop),  # vLLM needs text only to find stop strings; we decode ourselves
            output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.DELTA,
        )

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))


class _Waiting:
    """A request waiting for its first token: ``end`` stops counting it, once."""

    def __init__(self, on_end: Callable[[], None]) -> None:
        self._on_end: Callable[[], None] | None = on_end

    def end(self) -> None:
        if self._on_end is not None:
            self._on_end()
            self._on_end = None


class _TextStream:
    """Sends a completion's text to ``on_text`` as it grows, as the transformers backend does
    (:func:`feedback.model.rows.advance`): never half a character, nor what may start a stop string."""

    def __init__(self, on_text: TextCallback, stop: Sequence[str], decode: Decode) -> None:
        self._on_text = on_text
        self._stop = stop
        self._decode = decode
        self._sent = ""

    def update(self, ids: Sequence[int]) -> None:
        """Send what the tokens so far add to the text; nothing once a stop string is complete."""
        text = self._decode(ids)
        if self._stop and first_stop(text, self._stop) is not None:
            return
        self._send(streamable(text, self._stop))

    def finish(self, text: str) -> None:
        """Send the rest of the completion's final text."""
        self._send(text)

    def _send(self, text: str) -> None:
        if len(text) > len(self._sent) and text.startswith(self._sent):
            self._on_text(text[len(self._sent) :])
            self._sent = text


def _sampled_logprobs(positions: Any, token_ids: Sequence[int]) -> list[float]:
    """The log-probability of each sampled token, from vLLM's per-position ``{token id: Logprob}`` maps."""
    if not token_ids:  # an output without new tokens (vLLM then repeats all its log-probabilities)
        return []
    if positions is None or len(positions) != len(token_ids):
        raise ModelError("vLLM returned no log-probability for a sampled token")
    return [float(position[token].logprob) for position, token in zip(positions, token_ids, strict=True)]


def _counter() -> Callable[[str], int]:
    """LoRA ids of an engine of this process's own: 1, 2, ... in the order versions are first asked for."""
    ids = itertools.count(1)
    return lambda _version: next(ids)


def _eos_ids(model_dir: Path, config: Any, tokenizer_eos: int | None) -> frozenset[int]:
    """The ids that end a completion, chosen as :class:`feedback.model.runtime.ModelRuntime` chooses them."""
    try:
        configured = GenerationConfig.from_pretrained(model_dir, local_files_only=True).eos_token_id
    except OSError:  # no generation_config.json: transformers derives one from the model config
        configured = getattr(config, "eos_token_id", None)
    return eos_ids(configured, tokenizer_eos)


def _step_logger(metrics: GatewayMetrics) -> Any:
    """A vLLM stat-logger factory that observes the rows of every engine step in ``flywheel_batch_size``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class StepLogger(StatLoggerBase):  # type: ignore[misc]  # vLLM is untyped here
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
        ) -> None:
            if scheduler_stats is not None and scheduler_stats.num_running_reqs:
                metrics.batch_size.observe(scheduler_stats.num_running_reqs)

        def log_engine_initialized(self) -> None:
            pass

    return StepLogger
