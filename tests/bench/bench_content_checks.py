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
import sys
from collections.abc import Callable
from pathlib import Path

from interleave import interleaved
from replicas import machine

from feedback.content import SHIPPED_TERM_LIST, OffensiveLanguageClassifier, TermFilter
from feedback.content.classifier import _load

sys.path.insert(0, str(Path(__file__).parents[1] / "feedback" / "content"))
from test_content_corpus import CORPUS, labelled
from test_content_terms import matched_by_every_rule

REPEATS = 5


def sklearn_features(classifier: OffensiveLanguageClassifier) -> Callable[[str], float]:
    """The classifier's probability from scikit-learn's ``transform`` and the same fitted weights (the way before)."""
    vectorizer, _ = _load()

    def probability(text: str) -> float:
        [score] = classifier._calibrated(vectorizer.transform([text]) @ classifier._weights + classifier._intercepts)
        return score

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
    lines = [text for path in sorted(CORPUS.glob("*.tsv")) for _, text in labelled(path.name)]
    term_list = TermFilter.read(SHIPPED_TERM_LIST)

    def reference(text: str) -> bool:  # every rule searched in every reading (the way before)
        return bool(matched_by_every_rule(term_list, text))

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
