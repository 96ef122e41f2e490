"""Turn generated token ids into a completion: where it ends, its text, and its confidence.

The rules, shared by every backend so they compute the same number for the same tokens:

- A completion ends at the first end-of-sequence token (which is counted) or at the first
  token whose decoding completes a stop string, whichever comes first; later tokens (the
  padding of a finished row in a batch) are not part of it.
- With a stop string, the text is cut just before the stop string, but the tokens counted are
  all tokens up to and including the one that completed it: the model did generate them, and
  a stop string may end inside a token, so cutting at a token boundary would be arbitrary.
  Hence a completion always has at least one counted token, even when its text is empty.
- Confidence is ``exp(mean log-probability)`` of the counted tokens under the model's raw
  distribution (log-softmax of the raw logits, before temperature, top-p or penalties).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length"]

Decode = Callable[[Sequence[int]], str]
"""Decodes token ids to text, leaving special tokens (such as EOS) out."""


@dataclass(frozen=True)
class Ending:
    """Where a generated row ends: its text, how many tokens count, and why it stopped."""

    text: str
    n_tokens: int
    finish_reason: FinishReason


def confidence(token_logprobs: Sequence[float]) -> float:
    """Return ``exp(mean(token_logprobs))``, in (0, 1]; 1.0 for no tokens (exp of an empty sum)."""
    if not token_logprobs:
        return 1.0
    return math.exp(statistics.fmean(token_logprobs))


def first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Return the index where the earliest stop string starts in ``text``, or None."""
    found = [index for s in stop if (index := text.find(s)) >= 0]
    return min(found) if found else None


def find_ending(
    token_ids: Sequence[int],
    *,
    decode: Decode,
    eos_ids: Collection[int],
    stop: Sequence[str],
) -> Ending:
    """Find where a generated row ends and what its text is (see the module docstring).

    ``token_ids`` are the row's generated tokens, padding included. A row that ends neither at
    EOS nor at a stop string ran out of tokens: ``finish_reason`` is ``"length"``.
    """
    ids = list(token_ids)
    eos_at = next((i for i, token in enumerate(ids) if token in eos_ids), None)
    if eos_at is not None:
        ids = ids[: eos_at + 1]
    text = decode(ids)
    if stop and first_stop(text, stop) is not None:
        return _ending_at_stop(ids, decode=decode, stop=stop)
    return Ending(text, len(ids), "stop" if eos_at is not None else "length")


def _ending_at_stop(ids: Sequence[int], *, decode: Decode, stop: Sequence[str]) -> Ending:
    # Grow the prefix until its text first contains a stop string: that token completed it.
    for n in range(1, len(ids) + 1):
        text = decode(ids[:n])
        cut = first_stop(text, stop)
        if cut is not None:
            return Ending(text[:cut], n, "stop")
    raise AssertionError("a stop string in the full text must appear in some prefix")
