"""The A/B challenger's answers that are not served: what counts as garbage, and how a fallback reads.

When the challenger fails, hangs or answers garbage, the champion answers instead; the event stays
in the challenger arm with ``error`` set to :func:`fallback_error` and ``model_version`` set to the
champion's version, the one that answered.
"""

from __future__ import annotations

from feedback.model.runtime import Generation

MAX_ERROR_CHARS = 2000  # keeps a runaway exception message out of the event


def fallback_error(challenger: str, problem: str) -> str:
    """The ``error`` of an interaction whose challenger failed and whose champion answered."""
    return f"challenger {challenger} failed ({problem}); the champion answered"[:MAX_ERROR_CHARS]


def silent(timeout_s: float) -> str:
    """What a challenger that produced no text for ``timeout_s`` did."""
    return f"no new text for {timeout_s:g} s"


def invalid_answer(generation: Generation) -> str | None:
    """Why a challenger's answer cannot be served (empty, unprintable or inconsistent), or None."""
    text = generation.text
    if not isinstance(text, str) or not any(ch.isprintable() and not ch.isspace() for ch in text):
        return "an empty or unprintable answer"
    if generation.prompt_tokens < 0 or generation.completion_tokens < 0:
        return "negative token counts"
    if generation.finish_reason not in ("stop", "length"):
        return f"finish_reason {generation.finish_reason!r}"
    confidence = generation.confidence
    if confidence is not None and not 0 < confidence <= 1:  # NaN fails too
        return f"confidence {confidence!r} outside (0, 1]"
    return None
