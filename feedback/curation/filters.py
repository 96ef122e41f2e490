"""The cheap stages: PII redaction, the length filter and the content filter."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from feedback.content.terms import TermFilter
from feedback.curation.report import CurationError
from feedback.errors import ContentFilterError
from feedback.examples import Example, tokenize_example
from feedback.model.runtime import ModelRuntime
from feedback.pii import find_pii, redact
from feedback.settings import CurationSettings


def redact_examples(examples: list[Example]) -> tuple[list[Example], Counter[str]]:
    """Every example with its PII replaced; counts the redactions by kind and the examples changed."""
    counts: Counter[str] = Counter()
    redacted = []
    for example in examples:
        texts = [m["content"] for m in example.messages] + [example.completion]
        kinds = [match.kind for text in texts for match in find_pii(text)]
        if not kinds:
            redacted.append(example)
            continue
        counts.update(kinds)
        counts["examples_changed"] += 1
        messages = tuple({"role": m["role"], "content": redact(m["content"])} for m in example.messages)
        redacted.append(replace(example, messages=messages, completion=redact(example.completion)))
    return redacted, counts


def length_filter(
    runtime: ModelRuntime, examples: list[Example], min_tokens: int, max_tokens: int
) -> tuple[list[Example], Counter[str]]:
    """Keep examples whose training sequence has ``min_tokens <= n <= max_tokens`` tokens."""
    counts: Counter[str] = Counter()
    kept = []
    for example in examples:
        n = len(tokenize_example(runtime, example))
        if n < min_tokens:
            counts["too_short"] += 1
        elif n > max_tokens:
            counts["too_long"] += 1
        else:
            kept.append(example)
    return kept, counts


def compile_blocklist(settings: CurationSettings) -> TermFilter:
    """The content filter's rules (:class:`feedback.content.TermFilter`): terms first, then patterns.

    Raises:
        CurationError: a pattern is not a valid regular expression.
    """
    try:
        return TermFilter.from_lists(
            settings.blocked_terms, settings.blocked_patterns, category="blocked", source="curation.blocked_patterns"
        )
    except ContentFilterError as exc:
        raise CurationError(str(exc)) from exc


def content_filter(examples: list[Example], blocklist: TermFilter) -> tuple[list[Example], Counter[str]]:
    """Drop examples whose prompt or answer matches a rule; counts the first matching rule of each."""
    counts: Counter[str] = Counter()
    kept = []
    for example in examples:
        verdict = blocklist.check(example.text)
        if verdict.blocked:
            counts[verdict.matched[0]] += 1
        else:
            kept.append(example)
    return kept, counts
