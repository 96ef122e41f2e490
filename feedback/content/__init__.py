"""The content filter: sensitive prompts and answers are refused, behind one small interface.

Every filter implements :class:`ContentFilter` (``check(text) -> ContentVerdict``):

- :class:`TermFilter`: a sensitive-term list (whole words, case folded) and regular expressions,
  grouped in categories (``harassment``, ``threat``, ``sexual``, ``self_harm``, ``weapons_drugs``,
  ``profanity``). The list shipped in ``terms.txt`` was written and tuned on the development split
  of the labelled corpora in ``tests/feedback/content/corpus`` only, never on the test split.
  Curation's ``content`` stage runs the same filter over its own terms and patterns.
- :class:`OffensiveLanguageClassifier`: the offensive-language model shipped inside the
  ``alt-profanity-check`` wheel; blocks at a probability threshold.
- :class:`CombinedFilter`: blocks what any of its filters blocks (terms first, so a term names the
  category when both block).

:func:`build_filter` makes the configured combination; :class:`StreamCheck` applies a filter to a
text as it streams.
"""

from __future__ import annotations

from feedback.content.classifier import OffensiveLanguageClassifier
from feedback.content.stream import StreamCheck
from feedback.content.terms import SHIPPED_TERM_LIST, TermFilter
from feedback.content.verdict import CLEAN, CombinedFilter, ContentFilter, ContentVerdict
from feedback.settings import ContentFilterSettings

__all__ = [
    "CLEAN",
    "SHIPPED_TERM_LIST",
    "CombinedFilter",
    "ContentFilter",
    "ContentVerdict",
    "OffensiveLanguageClassifier",
    "StreamCheck",
    "TermFilter",
    "build_filter",
]


def build_filter(settings: ContentFilterSettings) -> ContentFilter:
    """The term list (shipped or configured) plus the extra terms and patterns, then the classifier if on.

    Raises:
        ContentFilterError: the term list cannot be read, a pattern does not compile, or the
            classifier cannot load.
    """
    terms = TermFilter.read(settings.term_list or SHIPPED_TERM_LIST)
    terms += TermFilter.from_lists(
        settings.terms, settings.patterns, source="content_filter.patterns", named_categories=True
    )
    if not settings.classifier:
        return terms
    return CombinedFilter([terms, OffensiveLanguageClassifier(settings.threshold)])
