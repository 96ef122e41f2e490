"""One request in a running batch: its sampling, its stops, its streamed text and its result.

A :class:`BatchRow` is everything a batch engine (:mod:`feedback.model.batch`) needs to know about a
request apart from its place in the KV cache:

- **Sampling per row.** :func:`pick_tokens` chooses each row's next token itself: greedy for
  temperature 0, else temperature and top-p with the row's own seeded generator, so a seeded row is
  reproducible whatever else shares its batch. It also keeps the token's raw log-probability
  (log-softmax of the unprocessed logits), from which confidence follows
  :mod:`feedback.model.completion`, like every backend.
- **Stops per row.** :func:`advance` records a row's new token and ends the row at EOS, at its own
  token budget, at a stop string, or when its caller cancelled it; it hands the row's new text to
  its ``on_text`` callback as it grows (token-by-token streaming), holding back what may be the
  start of a stop string or half a character.
- **Results.** :func:`finish` builds the row's :class:`~feedback.model.runtime.Generation`, sends
  its last text and hands it to ``on_done`` at once, while other rows keep generating.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from feedback.model.completion import confidence, find_ending, first_stop
from feedback.model.runtime import Generation, ModelRuntime, SamplingParams

BASE_ADAPTER = "__base__"
"""The adapter name that means "the base model, no adapter" in a mixed batch (peft's convention)."""

TextCallback = Callable[[str], None]
DoneCallback = Callable[[Generation], None]


@dataclass
class BatchRow:
    """One request in a batch; ``cancelled`` may be set from another thread to stop it at its next step."""

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
    generator: torch.Generator | None = None


def pick_tokens(rows: Sequence[BatchRow], logits: torch.Tensor) -> list[int]:
    """Choose each row's next token from its row of ``logits`` and record its raw log-probability."""
    raw = torch.log_softmax(logits.float(), dim=-1)
    greedy = torch.argmax(logits, dim=-1).tolist()
    tokens = [int(greedy[i]) if row.params.temperature == 0 else _sample(row, logits[i]) for i, row in enumerate(rows)]
    chosen = raw.gather(1, torch.tensor(tokens, device=raw.device)[:, None])[:, 0].tolist()
    for row, logprob in zip(rows, chosen, strict=True):
        row.logprobs.append(float(logprob))
    return tokens


def _sample(row: BatchRow, logits: torch.Tensor) -> int:
    params = row.params
    if params.seed is not None and row.generator is None:
        row.generator = torch.Generator().manual_seed(params.seed)
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        # Nucleus: keep the smallest set of most likely tokens whose mass reaches top_p.
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        probs[order[outside]] = 0.0
    return int(torch.multinomial(probs, 1, generator=row.generator))


def advance(runtime: ModelRuntime, row: BatchRow, token: int) -> None:
    """Record the row's new token, stream its new text, and mark the row done when it should end."""
    row.ids.append(token)
    text = runtime.decode(row.ids)
    stop = row.params.stop
    row.done = (
        row.cancelled
        or token in runtime.eos_ids
        or len(row.ids) >= row.params.max_tokens
        or (bool(stop) and first_stop(text, stop) is not None)
    )
    if row.on_text is not None and not row.done:
        safe = streamable(text, stop)
        if len(safe) > len(row.emitted) and safe.startswith(row.emitted):
            row.on_text(safe[len(row.emitted) :])
            row.emitted = safe


def finish(runtime: ModelRuntime, row: BatchRow) -> Generation:
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


def restart(row: BatchRow) -> None:
    """Reset the row to how it was queued, to run it again (what it already streamed is not sent twice)."""
    row.ids, row.logprobs = [], []
    row.done, row.result, row.generator = False, None, None


def streamable(text: str, stop: Sequence[str]) -> str:
    """The part of ``text`` that can be sent now: not a half-decoded character, not a possible stop start."""
    safe = text.rstrip("\ufffd")
    held = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(safe)), held, -1):
            if safe.endswith(s[:n]):
                held = n
                break
    return safe[: len(safe) - held]
