"""Mixed batches: many requests, each with its own sampling, budget, stops and adapter, in one generate.

:func:`generate_mixed` runs rows that share nothing but the base model through one left-padded
``generate`` call, so their forward passes are shared:

- **Sampling per row.** A logits processor picks each row's token itself (greedy for temperature
  0, else temperature and top-p with the row's own seeded generator) and leaves only that token
  finite, so the greedy search that ``generate`` runs keeps it. A seeded row is therefore
  reproducible whatever else shares its batch.
- **Stops per row.** A stopping criterion, called after every step, ends a row at EOS, at its own
  token budget, at a stop string, or when its caller cancelled it; it also hands each row's new
  text to the row's ``on_text`` callback as it grows (token-by-token streaming), and a finished
  row's generation to its ``on_done`` callback at once, while longer rows keep generating.
- **Adapters per row.** With a :class:`feedback.model.adapters.AdapterSet`, each row names its
  LoRA adapter (or the base model) and peft applies it per row (``adapter_names``).

Raw log-probabilities are taken in the sampler, which is the only logits processor and so sees
the unprocessed logits; confidence follows :mod:`feedback.model.completion`, like every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from feedback.model.completion import confidence, find_ending, first_stop
from feedback.model.runtime import Generation, ModelRuntime, SamplingParams

BASE_ADAPTER = "__base__"
"""The adapter name that means "the base model, no adapter" in a mixed batch (peft's convention)."""

TextCallback = Callable[[str], None]
DoneCallback = Callable[[Generation], None]


@dataclass
class BatchRow:
    """One request in a mixed batch; ``cancelled`` may be set from another thread to stop it early."""

    prompt_ids: list[int]
    params: SamplingParams
    adapter: str = BASE_ADAPTER
    on_text: TextCallback | None = None
    on_done: DoneCallback | None = None
    cancelled: bool = False
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    emitted: str = ""
    done: bool = False
    result: Generation | None = None


def generate_mixed(runtime: ModelRuntime, rows: Sequence[BatchRow], model: Any | None = None) -> list[Generation]:
    """Generate every row in one shared batch; ``model`` is a peft model when rows name adapters."""
    with runtime.lock:
        return _generate_locked(runtime, rows, model)


def _generate_locked(runtime: ModelRuntime, rows: Sequence[BatchRow], model: Any | None) -> list[Generation]:
    input_ids, attention_mask = runtime.left_pad([row.prompt_ids for row in rows])
    watcher = _RowWatcher(rows, runtime)
    extra: dict[str, Any] = {}
    if model is None:
        model = cast(Any, runtime.model)
        if any(row.adapter != BASE_ADAPTER for row in rows):
            raise ValueError("rows name adapters but no adapter model was given")
    else:
        # A peft model applies its active adapter unless told per row, so always name them.
        extra["adapter_names"] = [row.adapter for row in rows]
    config = runtime.greedy_config(max(row.params.max_tokens for row in rows))
    config.output_logits = False  # the sampler keeps the raw log-probabilities it needs
    with torch.inference_mode():
        cast(Any, model).generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            logits_processor=LogitsProcessorList([_RowSampler(rows)]),
            stopping_criteria=StoppingCriteriaList([watcher]),
            **extra,
        )
    return [row.result or _finish(runtime, row) for row in rows]


def _finish(runtime: ModelRuntime, row: BatchRow) -> Generation:
    """Build the row's generation, send its last text, and hand it to ``on_done``."""
    row.done = True
    ending = find_ending(row.ids, decode=runtime.decode, eos_ids=runtime.eos_ids, stop=row.params.stop)
    counted = tuple(row.logprobs[: ending.n_tokens])
    if row.on_text is not None and ending.text.startswith(row.emitted) and len(ending.text) > len(row.emitted):
        row.on_text(ending.text[len(row.emitted) :])
    row.result = Generation(
        text=ending.text,
        prompt_tokens=len(row.prompt_ids),
        completion_tokens=ending.n_tokens,
        finish_reason=ending.finish_reason,
        confidence=confidence(counted),
        token_logprobs=counted,
        token_ids=tuple(row.ids[: ending.n_tokens]),
    )
    if row.on_done is not None:
        row.on_done(row.result)
    return row.result


class _RowSampler(LogitsProcessor):
    """Chooses each row's next token by the row's own sampling parameters."""

    def __init__(self, rows: Sequence[BatchRow]) -> None:
        self._rows = rows
        self._generators = [
            torch.Generator().manual_seed(row.params.seed) if row.params.seed is not None else None for row in rows
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = torch.full_like(scores, float("-inf"))
        raw = torch.log_softmax(scores.float(), dim=-1)
        for index, row in enumerate(self._rows):
            if row.done:
                continue
            token = self._pick(scores[index], row.params, self._generators[index])
            chosen[index, token] = 0.0
            row.logprobs.append(float(raw[index, token]))
        return cast(torch.FloatTensor, chosen)

    @staticmethod
    def _pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
        if params.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            # Nucleus: keep the smallest set of most likely tokens whose mass reaches top_p.
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
            probs[order[outside]] = 0.0
        return int(torch.multinomial(probs, 1, generator=generator))


class _RowWatcher(StoppingCriteria):
    """After each step: record each row's new token, stream its text, and end rows that are done."""

    def __init__(self, rows: Sequence[BatchRow], runtime: ModelRuntime) -> None:
        self._rows = rows
        self._runtime = runtime

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for row, token in zip(self._rows, last, strict=True):
            if not row.done:
                self._advance(row, int(token))
                if row.done:
                    _finish(self._runtime, row)
        done = [row.done for row in self._rows]
        return cast(torch.BoolTensor, torch.tensor(done, dtype=torch.bool, device=input_ids.device))

    def _advance(self, row: BatchRow, token: int) -> None:
        row.ids.append(token)
        text = self._runtime.decode(row.ids)
        stop = row.params.stop
        row.done = (
            row.cancelled
            or token in self._runtime.eos_ids
            or len(row.ids) >= row.params.max_tokens
            or (bool(stop) and first_stop(text, stop) is not None)
        )
        if row.on_text is not None and not row.done:
            safe = _streamable(text, stop)
            if len(safe) > len(row.emitted) and safe.startswith(row.emitted):
                row.on_text(safe[len(row.emitted) :])
                row.emitted = safe


def _streamable(text: str, stop: Sequence[str]) -> str:
    """The part of ``text`` that can be sent now: not a half-decoded character, not a possible stop start."""
    safe = text.rstrip("\ufffd")
    held = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(safe)), held, -1):
            if safe.endswith(s[:n]):
                held = n
                break
    return safe[: len(safe) - held]
