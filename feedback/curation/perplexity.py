"""Text quality of prompts: their perplexity as a user's turn under the base model."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from feedback.curation.report import CurationError
from feedback.examples import Example
from feedback.model.runtime import ModelRuntime
from feedback.settings import CurationSettings

_SENTINEL = "\u0000"  # marks where a user's words go in the rendered chat template


def perplexity_filter(
    runtime: ModelRuntime, examples: list[Example], settings: CurationSettings
) -> tuple[list[Example], Counter[str]]:
    """Drop prompts above ``perplexity_max``, then the worst ``perplexity_drop_share`` of those scored."""
    scored = min(len(examples), settings.perplexity_max_examples)
    perplexities = prompt_perplexities(
        runtime,
        [e.prompt_text for e in examples[:scored]],
        batch_size=settings.perplexity_batch_size,
        max_tokens=settings.perplexity_max_prompt_tokens,
    )
    bound = math.inf if settings.perplexity_max is None else settings.perplexity_max
    dropped = {i for i, p in enumerate(perplexities) if not p <= bound}  # NaN and inf are above any bound
    counts = Counter({"unscored": len(examples) - scored, "above_max": len(dropped)})
    remaining = [i for i in range(scored) if i not in dropped]
    worst = math.floor(settings.perplexity_drop_share * len(remaining))
    # the highest perplexity first; among equals the later example goes first
    for i in sorted(remaining, key=lambda i: (-perplexities[i], -i))[:worst]:
        dropped.add(i)
    counts["worst_share"] = worst
    return [e for i, e in enumerate(examples) if i not in dropped], counts


def prompt_perplexities(
    runtime: ModelRuntime, texts: Sequence[str], *, batch_size: int = 4, max_tokens: int = 256
) -> list[float]:
    """Perplexity of each text as a user's turn: ``exp(-mean log p)`` of its first ``max_tokens`` tokens.

    Each text's tokens are scored after the chat template's opening of a user turn (system prompt
    and all), that is how likely the base model finds these words from a user. Texts are batched by
    length, right-padded (causal attention never looks ahead, so padding changes nothing). A text
    without tokens gets ``inf``.
    """
    prefix = _user_turn_prefix(runtime)
    tokenizer = runtime.tokenizer
    rows = [list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_tokens] for text in texts]
    result = [math.inf] * len(texts)
    order = sorted((i for i in range(len(rows)) if rows[i]), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        scored = runtime.score_token_rows([(prefix, rows[i]) for i in chunk])
        for i, logprobs in zip(chunk, scored, strict=True):
            result[i] = math.exp(-sum(logprobs) / len(logprobs))
    return result


def _user_turn_prefix(runtime: ModelRuntime) -> list[int]:
    rendered = runtime.tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False)
    if not isinstance(rendered, str) or _SENTINEL not in rendered:
        raise CurationError(f"model {runtime.name!r}: its chat template does not place a user's words verbatim")
    head = rendered[: rendered.index(_SENTINEL)]
    return list(runtime.tokenizer(head, add_special_tokens=False)["input_ids"]) or [runtime.scoring_eos_id]
