"""The content filter: sensitive prompts and answers are refused, behind one small interface.

Every filter implements :class:`ContentFilter` (``check(text) -> ContentVerdict``):

- :class:`TermFilter`: a sensitive-term list (whole words, case folded) and regular expressions,
  grouped in categories (``harassment``, ``threat``, ``sexual``, ``self_harm``, ``weapons_drugs``,
  ``profanity``). The list shipped in ``terms.txt`` was written and tuned on the development split
  of the labelled corpora in ``tests/feedback/content/corpus`` only, never on the test split.
  Curation's ``content`` stage runs the same filter over its own terms and patterns.
- :class:`OffensiveLanguageClassifier`: the offensive-language model shipped inside the
  ``alt-profanity-check`` wheel; blocks at a probability threshold.
- :class:`LearnedClassifier` (off by default: about 13 ms of the gateway's time per request against
  about 3 ms for the rest of the filter): the first 8 decoder layers of the default model
  (SmolLM2-135M-Instruct, from the model cache) with LoRA adapters fine-tuned as a classifier,
  mean-pooled, and a logistic head; the adapters and the head ship in ``learned.npz``, trained on
  the dev corpora only (``tests/feedback/content/fit_learned.py``), threshold 0.9856 (at most 1 of
  227 validation benign lines blocked; 78/173 validation sensitive lines found). Texts under 5
  tokens are not judged. About 23 ms a short text on 2 CPU cores.
- :class:`CombinedFilter`: blocks what any of its filters blocks (terms first, so a term names the
  category when both block).

Measured once after the choice: the shipped filter (terms and the offensive-language model) finds
94.89% of the test split (334/352, false blocks 2/1218), with the learned classifier 98.01%
(345/352, false blocks 3/1218), but only 53.3% and 72.0% of the round-4 batch written after all
tuning (80 and 108 of 150, false blocks 8/248); see the README's content-filter section.

:func:`build_filter` makes the configured combination; :class:`StreamCheck` applies a filter to a
text as it streams.
"""

from __future__ import annotations

from pathlib import Path

from feedback.content.classifier import OffensiveLanguageClassifier
from feedback.content.learned import LearnedClassifier
from feedback.content.stream import StreamCheck
from feedback.content.terms import SHIPPED_TERM_LIST, TermFilter
from feedback.content.verdict import CLEAN, CombinedFilter, ContentFilter, ContentVerdict
from feedback.errors import ContentFilterError, ModelError
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import ContentFilterSettings, ModelSettings

__all__ = [
    "CLEAN",
    "SHIPPED_TERM_LIST",
    "CombinedFilter",
    "ContentFilter",
    "ContentVerdict",
    "LearnedClassifier",
    "OffensiveLanguageClassifier",
    "StreamCheck",
    "TermFilter",
    "build_filter",
]


def build_filter(settings: ContentFilterSettings, model_cache: Path | None = None) -> ContentFilter:
    """The term list (shipped or configured) plus the extra terms and patterns, then the classifiers that are on.

    ``model_cache`` is where the default model is (or gets) converted, for the learned classifier;
    None: the model settings' default cache.

    Raises:
        ContentFilterError: the term list cannot be read, a pattern does not compile, or a
            classifier cannot load.
    """
    terms = TermFilter.read(settings.term_list or SHIPPED_TERM_LIST)
    terms += TermFilter.from_lists(
        settings.terms, settings.patterns, source="content_filter.patterns", named_categories=True
    )
    filters: list[ContentFilter] = [terms]
    if settings.classifier:
        filters.append(OffensiveLanguageClassifier(settings.threshold))
    if settings.learned:
        filters.append(LearnedClassifier(default_model_dir(model_cache), settings.learned_threshold))
    return filters[0] if len(filters) == 1 else CombinedFilter(filters)


def default_model_dir(model_cache: Path | None) -> Path:
    """The default model's directory (converted into ``model_cache`` the first time).

    Raises:
        ContentFilterError: the default model's package is missing or its conversion fails.
    """
    try:
        return prepare_model(DEFAULT_MODEL, model_cache or ModelSettings().cache_dir)
    except ModelError as exc:
        raise ContentFilterError(f"the learned classifier needs the default model: {exc}") from exc
