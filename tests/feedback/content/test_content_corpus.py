"""Recall and false-block rate of the shipped content filter on labelled corpora written for the purpose.

``corpus/sensitive.tsv`` and ``corpus/benign.tsv`` are the TEST split: written by hand before the
term list existed and never used to tune it. The benign side adds the project's catalogue
questions, answers and prompts (``feedback.catalogue``) and the golden sets. The ``dev_`` files
are the split the term list and the classifier threshold were tuned on. Run with ``-s`` to see
the numbers:

    .venv/bin/pytest -q -s tests/feedback/content/test_content_corpus.py
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from feedback.catalogue import build_catalogue, make_questions
from feedback.content import SHIPPED_TERM_LIST, ContentFilter, OffensiveLanguageClassifier, TermFilter, build_filter
from feedback.settings import ContentFilterSettings

CORPUS = Path(__file__).with_name("corpus")
GOLDEN = Path(__file__).parents[3] / "evaluation" / "golden"
CATALOGUE_SEED = 20261206  # a catalogue of its own; the questions and answers are the shop's usual text


def labelled(name: str) -> list[tuple[str, str]]:
    """``(label, text)`` rows of a corpus file."""
    rows = []
    for line in (CORPUS / name).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            label, text = line.split("\t", 1)
            rows.append((label, text))
    return rows


def catalogue_text() -> list[tuple[str, str]]:
    """The project's own traffic: catalogue questions, reference answers, prompts, and the golden sets."""
    questions = make_questions(build_catalogue(CATALOGUE_SEED), CATALOGUE_SEED, 150)
    rows = [("catalogue", q.messages[-1]["content"]) for q in questions]
    rows += [("catalogue", q.answer) for q in questions]
    rows += [("catalogue", q.messages[0]["content"]) for q in questions[:20]]
    for path in sorted(GOLDEN.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            example = json.loads(line)
            rows += [("golden", m["content"]) for m in example["messages"] if m["role"] != "system"]
            rows.append(("golden", example["completion"]))
    return rows


def rates(content_filter: ContentFilter, sensitive: list[tuple[str, str]], benign: list[tuple[str, str]]) -> str:
    missed = Counter(label for label, text in sensitive if not content_filter.check(text).blocked)
    blocked = [text for _, text in benign if content_filter.check(text).blocked]
    totals = Counter(label for label, _ in sensitive)
    per_category = ", ".join(f"{c} {1 - missed[c] / n:.3f}" for c, n in sorted(totals.items()))
    return (
        f"recall {1 - sum(missed.values()) / len(sensitive):.4f} ({len(sensitive) - sum(missed.values())}"
        f"/{len(sensitive)}: {per_category}); false blocks {len(blocked) / len(benign):.4f} "
        f"({len(blocked)}/{len(benign)}{': ' + ' | '.join(blocked) if blocked else ''})"
    )


@pytest.fixture(scope="module")
def shipped() -> ContentFilter:
    return build_filter(ContentFilterSettings())


def test_the_corpora_are_large_enough_and_apart() -> None:
    sensitive, benign = labelled("sensitive.tsv"), labelled("benign.tsv") + catalogue_text()
    assert len(sensitive) >= 300
    assert len(benign) >= 1000
    assert len({label for label, _ in sensitive}) == 6
    dev = {text for _, text in labelled("dev_sensitive.tsv") + labelled("dev_benign.tsv")}
    assert not dev & {text for _, text in sensitive + benign}  # no line of the dev split is tested on


def blocked(content_filter: ContentFilter, rows: list[tuple[str, str]]) -> list[str]:
    return [text for _, text in rows if content_filter.check(text).blocked]


def test_recall_and_false_block_rate_on_the_test_split(shipped: ContentFilter) -> None:
    """Pinned to the measured counts, so any change to the list or the threshold shows here (and in the README)."""
    sensitive, benign = labelled("sensitive.tsv"), labelled("benign.tsv") + catalogue_text()
    print("\ncontent filter on the test split (shipped settings):", rates(shipped, sensitive, benign))
    print("  term list alone:", rates(TermFilter.read(SHIPPED_TERM_LIST), sensitive, benign))
    classifier = OffensiveLanguageClassifier(ContentFilterSettings().threshold)
    print("  classifier alone:", rates(classifier, sensitive, benign))
    assert (len(blocked(shipped, sensitive)), len(sensitive)) == (323, 352)  # recall 0.9176
    assert blocked(shipped, benign) == [
        "A female dog is called a bitch in breeding registries.",
        "The ass is another name for a donkey in older English texts.",
    ]
    assert len(benign) == 1218  # false-block rate 2/1218 = 0.0016 < 0.005


@pytest.mark.xfail(strict=True, reason="measured recall 0.9176 on the test split: the 0.95 target is not met yet")
def test_recall_reaches_the_target_on_the_test_split(shipped: ContentFilter) -> None:
    sensitive = labelled("sensitive.tsv")
    assert len(blocked(shipped, sensitive)) / len(sensitive) >= 0.95
