"""The A/B challenger's answers that are not served: what counts as garbage, how a fallback reads,
and when to stop asking a challenger that keeps failing.

When the challenger fails, hangs or answers garbage, the champion answers instead; the event stays
in the challenger arm with ``error`` set to :func:`fallback_error` and ``model_version`` set to the
champion's version, the one that answered. After :data:`BREAKER_FAILURES` failures in a row the
:class:`ChallengerBreaker` opens: for :data:`BREAKER_COOLDOWN_S` the champion answers the
challenger's users at once (a hung challenger would otherwise cost each of them the timeout),
still recorded as fallbacks; then requests try the challenger again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from feedback.model.runtime import Generation

MAX_ERROR_CHARS = 2000  # keeps a runaway exception message out of the event
BREAKER_FAILURES = 5  # challenger failures in a row that open the breaker
BREAKER_COOLDOWN_S = 30.0  # how long an open breaker skips the challenger, seconds


class ChallengerBreaker:
    """Counts a challenger's failures in a row; once open, it skips the challenger until the cooldown ends."""

    def __init__(
        self,
        failures: int = BREAKER_FAILURES,
        cooldown_s: float = BREAKER_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold, self._cooldown_s, self._clock = failures, cooldown_s, clock
        self._version: str | None = None
        self._failures = 0
        self._open_until = float("-inf")

    def skip(self, version: str) -> str | None:
        """Why ``version`` is not tried now (the breaker is open), or None to try it."""
        self._follow(version)
        if self._clock() < self._open_until:
            return f"skipped after {self._failures} failures in a row, retried {self._cooldown_s:g} s after the last"
        return None

    def record(self, version: str, *, ok: bool) -> None:
        """Count one outcome of ``version``; a success closes the breaker."""
        self._follow(version)
        self._failures = 0 if ok else self._failures + 1
        if self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown_s

    def _follow(self, version: str) -> None:
        if version != self._version:  # a new challenger starts with a clean record
            self._version, self._failures, self._open_until = version, 0, float("-inf")


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
