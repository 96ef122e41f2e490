"""What a content filter answers, the interface every filter implements, and filters in combination."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

CLEAN_CATEGORY = "none"


@dataclass(frozen=True, slots=True)
class ContentVerdict:
    """Whether a text is blocked, in which category, how surely, and by which rules.

    ``score`` is in [0, 1]: 1.0 for a rule match, the classifier's probability otherwise.
    ``matched`` names the rules that matched (``term:...``, ``pattern:...``), never the text.
    """

    blocked: bool
    category: str = CLEAN_CATEGORY
    score: float = 0.0
    matched: tuple[str, ...] = ()


CLEAN = ContentVerdict(blocked=False)


class ContentFilter(Protocol):
    """Anything that judges one text."""

    def check(self, text: str) -> ContentVerdict:
        """The verdict on ``text``."""
        ...


class CombinedFilter:
    """Blocks what any of its filters blocks; the first blocking filter names the category."""

    def __init__(self, filters: Sequence[ContentFilter]) -> None:
        self.filters = tuple(filters)

    def check(self, text: str) -> ContentVerdict:
        """Every filter's verdict combined: the highest score, every matched rule."""
        verdicts = [f.check(text) for f in self.filters]
        blocking = [v for v in verdicts if v.blocked]
        score = max((v.score for v in verdicts), default=0.0)
        if not blocking:
            return ContentVerdict(blocked=False, score=score)
        matched = tuple(rule for v in blocking for rule in v.matched)
        return ContentVerdict(blocked=True, category=blocking[0].category, score=score, matched=matched)
