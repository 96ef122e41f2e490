"""Checking a text as it streams: only checked text is released, and never half a word.

Each piece extends the text; text goes out up to its last word boundary once checked. At every
word boundary the term list checks the sentence being written (its patterns never reach across a
sentence end); when a sentence ends, the other filters (the classifier) check the whole text so
far as well; when the generation ends, the whole filter checks the whole text. The word still being
written is held back until a boundary follows it, so a blocked term is never sent in part, and a
term that starts a longer word ("kill" of "killdeer") is not judged before the word ends. The
decision is as strict as the one on the whole answer, or stricter: a stream stops at the first
checked text that is blocked. The classifier costs several milliseconds a call whatever the
length, so it runs once per sentence rather than once per word.
"""

from __future__ import annotations

import re

from feedback.content.terms import TermFilter
from feedback.content.verdict import CLEAN, CombinedFilter, ContentFilter, ContentVerdict

_BOUNDARY = re.compile(r"\W(?=\w*\Z)")  # the last non-word character
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")  # not the point of "$34.99"


def split_filter(content_filter: ContentFilter) -> tuple[ContentFilter | None, ContentFilter | None]:
    """A filter's term lists (cheap enough for every word) and its other filters; None where there is none."""
    if isinstance(content_filter, TermFilter):
        return content_filter, None
    if not isinstance(content_filter, CombinedFilter):
        return None, content_filter
    terms = [f for f in content_filter.filters if isinstance(f, TermFilter)]
    others = [f for f in content_filter.filters if not isinstance(f, TermFilter)]
    return (CombinedFilter(terms) if terms else None), (CombinedFilter(others) if others else None)


class StreamCheck:
    """The content filter over a growing text."""

    def __init__(self, content_filter: ContentFilter) -> None:
        self._filter = content_filter
        self._terms, self._others = split_filter(content_filter)
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
        sentence_ended = _SENTENCE_END.search(self._text, self._released, end) is not None
        if self._terms is None and not sentence_ended:
            return "", CLEAN  # nothing cheap to check with: wait for the sentence to end
        verdict = self._terms.check(self._text[self._sentence : end]) if self._terms is not None else CLEAN
        if sentence_ended and not verdict.blocked and self._others is not None:
            verdict = self._others.check(self._text[:end])
        return self._release(end, verdict, sentence_ended=sentence_ended)

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
