"""The content filter's two shipped checks per text, each against the way it used to run, side by side.

Data: every line of the labelled corpora (``tests/feedback/content/corpus/*.tsv``, about 3,500 lines,
about 40% of them sensitive), and the same lines' clean ones alone (what a gateway mostly sees).

Competitors, each warmed up once, then timed in turn within each of 5 repeats (``interleave``):
- term list: ``TermFilter.check`` (a rule is searched only in a text that may match it: a term where
  its first word is a whole word of the text, a pattern where one of its required strings is)
  against searching every rule in every reading, as before, with the same verdicts (checked here);
- offensive-language classifier: ``probabilities`` one text at a time from its own TF-IDF features
  against scikit-learn's ``transform`` of the text and the same fitted weights, with the same
  probabilities (checked here, within 1e-12).

Prints each competitor's median microseconds per text and the ratio.

    PYTHONPATH=tests .venv/bin/python tests/bench/bench_content_checks.py
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
from interleave import interleaved
from replicas import machine

from feedback.content import SHIPPED_TERM_LIST, OffensiveLanguageClassifier, TermFilter
from feedback.content.classifier import _load
from feedback.content.terms import deobfuscate, normalise

CORPUS = Path(__file__).parents[1] / "feedback" / "content" / "corpus"
REPEATS = 5


def corpus_lines() -> list[str]:
    return [
        line.split("\t", 1)[1]
        for path in sorted(CORPUS.glob("*.tsv"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]


def every_pattern(term_list: TermFilter) -> Callable[[str], bool]:
    """The term list's verdict from searching every rule in every reading (the way before)."""

    def blocked(text: str) -> bool:
        folded = normalise(text)
        readings = {folded, deobfuscate(folded)}
        return any(rule.regex.search(reading) for rule in term_list.rules for reading in readings)

    return blocked


def sklearn_features(classifier: OffensiveLanguageClassifier) -> Callable[[str], float]:
    """The classifier's probability from scikit-learn's ``transform`` and the same fitted weights (the way before)."""
    vectorizer, _ = _load()
    weights, intercepts, a, b = classifier._weights, classifier._intercepts, classifier._a, classifier._b

    def probability(text: str) -> float:
        decisions = vectorizer.transform([text]) @ weights + intercepts
        return float((1.0 / (1.0 + np.exp(a * decisions + b))).mean(axis=1)[0])

    return probability


def per_text(name: str, competitors: dict[str, Callable[[], object]], count: int) -> None:
    wall, _ = interleaved(competitors, REPEATS)
    medians = {side: statistics.median(times) / count * 1e6 for side, times in wall.items()}
    first, second = medians
    print(f"{name}, {count} texts:")
    for side, us in medians.items():
        print(f"  {side:<44} {us:>8.1f} us per text")
    print(f"  ratio {second} / {first}: {medians[second] / medians[first]:.2f}")


def main() -> None:
    print(machine())
    lines = corpus_lines()
    term_list = TermFilter.read(SHIPPED_TERM_LIST)
    reference = every_pattern(term_list)
    verdicts = [reference(text) for text in lines]
    assert [term_list.check(text).blocked for text in lines] == verdicts, "the pre-filter changed a verdict"
    clean = [text for text, blocked in zip(lines, verdicts, strict=True) if not blocked]
    for label, texts in (("term list, every corpus line", lines), ("term list, the clean lines", clean)):
        per_text(
            label,
            {
                "check (possible rules only)": lambda texts=texts: [term_list.check(t) for t in texts],
                "every rule searched": lambda texts=texts: [reference(t) for t in texts],
            },
            len(texts),
        )

    classifier = OffensiveLanguageClassifier(0.99)
    before = sklearn_features(classifier)
    ours = [classifier.probabilities([text])[0] for text in lines]
    assert max(abs(o - before(t)) for o, t in zip(ours, lines, strict=True)) < 1e-12, "the features changed"
    per_text(
        "offensive-language classifier, every corpus line",
        {
            "own TF-IDF features": lambda: [classifier.probabilities([t]) for t in lines],
            "scikit-learn transform": lambda: [before(t) for t in lines],
        },
        len(lines),
    )


if __name__ == "__main__":
    main()
