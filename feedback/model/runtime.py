"""Load a causal LM from a local directory, generate chat completions and score them.

:class:`ModelRuntime` is the transformers backend of the model runtime. Every result carries
the raw per-token log-probabilities and the confidence defined in :mod:`feedback.model.completion`.

Batching: :meth:`ModelRuntime.generate_batch` groups requests by identical
:class:`SamplingParams` (seed included) and runs each group as one left-padded batch. A seed
seeds the whole group's sampling once (in a forked RNG, so the global RNG is untouched): a seeded
request is reproducible for the same batch composition, and a single seeded request always
is. Requests whose seeds differ never share a batch.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from feedback.errors import ModelError, NotCausalLMError
from feedback.model import source
from feedback.model.completion import Decode, confidence, find_ending, first_stop
from feedback.model.convert import MANIFEST

Messages = Sequence[Mapping[str, str]]
"""Chat messages, each with a ``role`` and a ``content``."""

DTYPES: Mapping[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion (OpenAI semantics; ``temperature`` 0 means greedy)."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


@dataclass(frozen=True)
class Generation:
    """One completion, with the raw log-probability of every counted token.

    ``token_ids`` are the counted tokens (EOS included when generated), so another backend or a
    teacher-forced :meth:`ModelRuntime.score_tokens` pass can recompute the same numbers.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    confidence: float
    token_logprobs: tuple[float, ...]
    token_ids: tuple[int, ...] = ()


class ModelRuntime:
    """A loaded causal LM and its tokenizer; calls from several threads are serialized."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._name = name
        self._lock = threading.Lock()
        self._eos_ids = eos_ids(model.generation_config.eos_token_id, tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else min(self._eos_ids)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
    ) -> ModelRuntime:
        """Load the model directory made by :func:`feedback.model.source.prepare_model`.

        ``threads`` sets torch's intra-op thread count for the whole process.

        Raises:
            ModelNotFoundError: ``model_dir`` does not exist.
            NotCausalLMError: it holds no causal LM, or transformers cannot load it.
            ModelError: the model has no chat template or cannot move to ``device``.
            ValueError: ``dtype`` is not one of :data:`DTYPES`.
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        source.validate_model_dir(model_dir)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype], local_files_only=True)
        except _LOAD_ERRORS as exc:
            raise NotCausalLMError(f"could not load model {str(model_dir)!r}: {exc}") from exc
        if not tokenizer.chat_template:
            raise ModelError(f"model {str(model_dir)!r} has no chat template to render messages")
        try:
            # transformers types `to` through a decorator that mypy cannot see through.
            model = cast(Any, model).to(torch.device(device))
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ModelError(f"could not move model to device {device!r}: {exc}") from exc
        return cls(model.eval(), tokenizer, name=model_name(model_dir))

    @property
    def name(self) -> str:
        """The model's name: the manifest's name for a converted GGUF, else the directory name."""
        return self._name

    @property
    def model(self) -> PreTrainedModel:
        """The underlying transformers model (in eval mode)."""
        return self._model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer."""
        return self._tokenizer

    @property
    def lock(self) -> threading.Lock:
        """Held while the model computes; batch engines (``feedback.model.batch``) take it too."""
        return self._lock

    @property
    def eos_ids(self) -> frozenset[int]:
        """Every token id that ends a completion."""
        return self._eos_ids

    @property
    def pad_id(self) -> int:
        """The padding id: the tokenizer's, else the smallest end-of-sequence id."""
        return self._pad_id

    @property
    def scoring_eos_id(self) -> int:
        """The end-of-turn id that ends every scored completion (``score(..., add_eos=True)`` appends it)."""
        eos = self._tokenizer.eos_token_id
        return int(eos) if eos in self._eos_ids else min(self._eos_ids)

    @property
    def context_length(self) -> int:
        """Most tokens (prompt plus completion) the model attends to."""
        return int(getattr(self._model.config, "max_position_embeddings", 2048))

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids to text, special tokens (such as EOS) left out."""
        return self._decode(ids)

    def left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts as one left-padded batch on the model's device: input ids and attention mask."""
        return self._left_pad(prompts)

    def greedy_config(self, max_new_tokens: int) -> GenerationConfig:
        """A greedy generation config that keeps the raw logits (batch engines choose tokens themselves)."""
        return self._generation_config(SamplingParams(max_tokens=max_new_tokens, temperature=0.0))

    def render_prompt(self, messages: Messages) -> list[int]:
        """Return the prompt token ids: the chat template with the generation prompt added."""
        with self._lock:
            return self._render(messages)

    def generate(self, messages: Messages, params: SamplingParams = SamplingParams()) -> Generation:
        """Generate one completion for ``messages``."""
        return self.generate_batch([(messages, params)])[0]

    def generate_batch(self, requests: Sequence[tuple[Messages, SamplingParams]]) -> list[Generation]:
        """Generate completions for ``requests``, in order (see the module docstring on batching)."""
        groups: dict[SamplingParams, list[int]] = {}
        for index, (_, params) in enumerate(requests):
            groups.setdefault(params, []).append(index)
        results: list[Generation | None] = [None] * len(requests)
        with self._lock:
            prompts = [self._render(messages) for messages, _ in requests]
            for params, indices in groups.items():
                rows = self._generate_rows([prompts[i] for i in indices], params)
                for index, generation in zip(indices, rows, strict=True):
                    results[index] = generation
        return [generation for generation in results if generation is not None]

    def score(self, messages: Messages, completion_text: str, *, add_eos: bool = True) -> tuple[float, ...]:
        """Return the raw log-probability of each token of ``completion_text`` after ``messages``.

        ``add_eos`` appends the end-of-turn token, as a completion that ended by itself has it.
        """
        return self.score_batch([(messages, completion_text)], add_eos=add_eos)[0]

    def score_batch(
        self, requests: Sequence[tuple[Messages, str]], *, add_eos: bool = True, batch_size: int = 16
    ) -> list[tuple[float, ...]]:
        """:meth:`score` of many (messages, completion) pairs, ``batch_size`` sequences a forward pass."""
        with self._lock:
            pairs = []
            for messages, text in requests:
                completion = self._tokenizer(text, add_special_tokens=False)["input_ids"]
                pairs.append((self._render(messages), [*completion, self.scoring_eos_id] if add_eos else completion))
            return [
                scores
                for start in range(0, len(pairs), batch_size)
                for scores in self._score_rows(pairs[start : start + batch_size])
            ]

    def score_token_rows(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, ...]]:
        """:meth:`score_tokens` of many (prompt ids, completion ids) pairs in one right-padded forward pass."""
        with self._lock:
            return self._score_rows([(list(prompt), list(completion)) for prompt, completion in pairs])

    def score_tokens(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> tuple[float, ...]:
        """Return the raw log-probability of each completion token (one teacher-forced pass)."""
        with self._lock:
            return self._score_tokens(prompt_ids, completion_ids)

    def _render(self, messages: Messages) -> list[int]:
        return render_chat(self._tokenizer, messages)

    def _decode(self, ids: Sequence[int]) -> str:
        return cast(str, self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def _score_tokens(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> tuple[float, ...]:
        if not completion_ids:
            return ()
        return self._score_rows([(list(prompt_ids), list(completion_ids))])[0]

    def _score_rows(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, ...]]:
        """Log-probabilities of each pair's completion after its prompt, the pairs right-padded into one pass.

        Causal attention never lets a real token see the padding after it, so each row's numbers are
        those of a pass of its own, up to the order of float sums.
        """
        if any(not prompt for prompt, _ in pairs):
            raise ValueError("prompt_ids must hold at least one token")
        width = max(len(prompt) + len(completion) for prompt, completion in pairs)
        ids = torch.full((len(pairs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prompt, completion) in enumerate(pairs):
            ids[row, : len(prompt) + len(completion)] = torch.tensor([*prompt, *completion])
            mask[row, : len(prompt) + len(completion)] = 1
        extra: dict[str, Any] = {}
        if self._keeps_logits:
            # Position i predicts token i + 1: the earliest completion is predicted from its prompt's last position.
            extra["logits_to_keep"] = width - min(len(prompt) for prompt, _ in pairs) + 1
        device = self._model.device
        with torch.inference_mode():
            logits = self._model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra).logits
        first = width - logits.shape[1]  # the position of logits[:, 0]
        scores = []
        for row, (prompt, completion) in enumerate(pairs):
            start = len(prompt) - 1 - first
            predicting = logits[row, start : start + len(completion)]
            targets = torch.tensor(completion, dtype=torch.long, device=logits.device)[:, None]
            logprobs = torch.log_softmax(predicting.float(), dim=-1).gather(1, targets)
            scores.append(tuple(float(x) for x in logprobs[:, 0].tolist()))
        return scores

    def _generate_rows(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        input_ids, attention_mask = self._left_pad(prompts)
        criteria = StoppingCriteriaList()
        if params.stop:
            criteria.append(_StopStrings(input_ids.shape[1], params.stop, self._decode))
        with self._seeded(params.seed), torch.inference_mode():
            out = cast(Any, self._model).generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=self._generation_config(params),
                stopping_criteria=criteria,
            )
        generated = out.sequences[:, input_ids.shape[1] :]
        logprobs = _chosen_logprobs(out.logits, generated)
        rows = []
        for prompt, ids, row_logprobs in zip(prompts, generated.tolist(), logprobs, strict=True):
            ending = find_ending(ids, decode=self._decode, eos_ids=self._eos_ids, stop=params.stop)
            counted = tuple(row_logprobs[: ending.n_tokens])
            rows.append(
                Generation(
                    text=ending.text,
                    prompt_tokens=len(prompt),
                    completion_tokens=ending.n_tokens,
                    finish_reason=ending.finish_reason,
                    confidence=confidence(counted),
                    token_logprobs=counted,
                    token_ids=tuple(ids[: ending.n_tokens]),
                )
            )
        return rows

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        device = self._model.device
        return input_ids.to(device), attention_mask.to(device)

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        sampling: dict[str, Any] = {"do_sample": False}
        if params.temperature > 0:
            # top_k=0 turns off transformers' default top-k of 50, which OpenAI semantics lack.
            sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        return GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=params.max_tokens,
            eos_token_id=sorted(self._eos_ids),
            pad_token_id=self._pad_id,
            output_logits=True,
            return_dict_in_generate=True,
            **sampling,
        )

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        if seed is None:
            yield
            return
        device = self._model.device
        devices = [] if device.type == "cpu" else [device.index or 0]
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            torch.manual_seed(seed)
            yield


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` becomes ``bf16`` where ``device`` computes bf16 natively (CUDA; AMX or AVX-512 BF16 CPUs)."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> list[int]:
    """Prompt token ids for ``messages``: the chat template with the generation prompt added."""
    text = tokenizer.apply_chat_template(
        [dict(message) for message in messages], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(cast(str, text), add_special_tokens=False)["input_ids"])


class _StopStrings(StoppingCriteria):
    """Stopping criterion: a row stops once its generated text contains a stop string."""

    def __init__(self, prompt_width: int, stop: tuple[str, ...], decode: Decode) -> None:
        self._prompt_width = prompt_width
        self._stop = stop
        self._decode = decode

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = [self._decode(row[self._prompt_width :].tolist()) for row in input_ids]
        done = [first_stop(text, self._stop) is not None for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _chosen_logprobs(logits: Sequence[torch.Tensor], generated: torch.Tensor) -> list[list[float]]:
    """Raw log-probability of each generated token: log-softmax of the unprocessed logits."""
    steps = [
        torch.log_softmax(step.float(), dim=-1).gather(1, generated[:, t : t + 1]) for t, step in enumerate(logits)
    ]
    return cast(list[list[float]], torch.cat(steps, dim=1).tolist())


def eos_ids(configured: int | list[int] | None, tokenizer_eos: int | None) -> frozenset[int]:
    """The ids that end a completion: the generation config's ``eos_token_id`` (one or a list), else the tokenizer's."""
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if not ids and tokenizer_eos is not None:
        ids = [tokenizer_eos]
    if not ids:
        raise ModelError("the model defines no end-of-sequence token")
    return frozenset(int(i) for i in ids)


def model_name(model_dir: Path) -> str:
    """The name a prepared model directory gives its model (its manifest's, else the directory's name)."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return model_dir.name
    name = manifest.get("name") if isinstance(manifest, dict) else None
    return name if isinstance(name, str) and name else model_dir.name
