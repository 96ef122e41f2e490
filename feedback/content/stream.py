"""Checking a text as it streams: only checked text is released, and never half a word.

Each piece extends the text; text goes out up to its last word boundary once checked. At every
word boundary the term list checks the sentence being written (its patterns never reach across a
sentence end); when a sentence ends, the whole filter (the classifier too) checks the whole text so
far; when the generation ends, it checks the whole text again. The word still being written is held
back until a boundary follows it, so a blocked term is never sent in part, and a term that starts a
longer word ("kill" of "killdeer") is not judged before the word ends. The decision is as strict as
the one on the whole answer, or stricter: a stream stops at the first checked text that is blocked.
A check costs about a millisecond per sentence for the term list and several for the classifier,
so the classifier runs once per sentence rather than once per word.
"""

from __future__ import annotations

import re

from feedback.content.terms import TermFilter
from feedback.content.verdict import CLEAN, CombinedFilter, ContentFilter, ContentVerdict

_BOUNDARY = re.compile(r"\W(?=\w*\Z)")  # the last non-word character
_SENTENCE_END = re.compile(r"[.!?\n]")


def term_part(content_filter: ContentFilter) -> ContentFilter | None:
    """The term lists of a filter (cheap enough for every word), or None when it has none."""
    if isinstance(content_filter, TermFilter):
        return content_filter
    if isinstance(content_filter, CombinedFilter):
        parts = [part for f in content_filter.filters if (part := term_part(f)) is not None]
        return CombinedFilter(parts) if parts else None
    return None


class StreamCheck:
    """The content filter over a growing text."""

    def __init__(self, content_filter: ContentFilter) -> None:
        self._filter = content_filter
        self._words = term_part(content_filter)
        self._text = ""
        self._released = 0
        self._sentence = 0  # where the sentence being written starts

    def feed(self, piece: str) -> tuple[str, ContentVerdict]:
        """Add ``piece``; return the text that may go out now and the verdict on what was checked."""
        self._text += piece
        boundary = _BOUNDARY.search(self._text, self._released)
        if boundary is None:
            return "", CLEAN
        end = boundary.end()
        if _SENTENCE_END.search(self._text, self._released, end):
            return self._release(end, self._filter.check(self._text[:end]), sentence_ended=True)
        if self._words is None:
            return "", CLEAN  # nothing cheap to check with: wait for the sentence to end
        return self._release(end, self._words.check(self._text[self._sentence : end]), sentence_ended=False)

    def finish(self) -> tuple[str, ContentVerdict]:
        """The generation ended: check the whole text; return the rest that may go out and the verdict."""
        end = len(self._text)
        return self._release(end, self._filter.check(self._text), sentence_ended=True)

    def _release(self, end: int, verdict: ContentVerdict, *, sentence_ended: bool) -> tuple[str, ContentVerdict]:
        if verdict.blocked:
            return "", verdict
        released, self._released = self._text[self._released : end], end
        if sentence_ended:
            self._sentence = end
        return released, verdict
