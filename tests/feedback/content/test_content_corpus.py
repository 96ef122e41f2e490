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


Rows = list[tuple[str, str]]


def blocked(content_filter: ContentFilter, rows: Rows) -> Rows:
    """The rows the filter blocks."""
    return [(label, text) for label, text in rows if content_filter.check(text).blocked]


def describe(sensitive: Rows, caught: Rows, benign: Rows, false_blocks: Rows) -> str:
    """Recall (overall and per category) and the false-block rate, with the falsely blocked lines."""
    totals, found = Counter(label for label, _ in sensitive), Counter(label for label, _ in caught)
    per_category = ", ".join(f"{c} {found[c] / n:.3f}" for c, n in sorted(totals.items()))
    lines = "".join(f" | {text}" for _, text in false_blocks)
    return (
        f"recall {len(caught) / len(sensitive):.4f} ({len(caught)}/{len(sensitive)}: {per_category}); "
        f"false blocks {len(false_blocks) / len(benign):.4f} ({len(false_blocks)}/{len(benign)}{lines})"
    )


@pytest.fixture(scope="module")
def test_split() -> tuple[Rows, Rows]:
    return labelled("sensitive.tsv"), labelled("benign.tsv") + catalogue_text()


@pytest.fixture(scope="module")
def measured(test_split: tuple[Rows, Rows]) -> tuple[Rows, Rows]:
    """What the shipped filter blocks of the sensitive and of the benign test split."""
    shipped = build_filter(ContentFilterSettings())
    sensitive, benign = test_split
    return blocked(shipped, sensitive), blocked(shipped, benign)


def test_the_corpora_are_large_enough_and_apart(test_split: tuple[Rows, Rows]) -> None:
    sensitive, benign = test_split
    assert len(sensitive) >= 300
    assert len(benign) >= 1000
    assert len({label for label, _ in sensitive}) == 6
    dev = {text for _, text in labelled("dev_sensitive.tsv") + labelled("dev_benign.tsv")}
    assert not dev & {text for _, text in sensitive + benign}  # no line of the dev split is tested on


def test_recall_and_false_block_rate_on_the_test_split(
    test_split: tuple[Rows, Rows], measured: tuple[Rows, Rows]
) -> None:
    """Pinned to the measured counts, so any change to the list or the threshold shows here (and in the README)."""
    (sensitive, benign), (caught, false_blocks) = test_split, measured
    print("\ncontent filter on the test split (shipped settings):", describe(sensitive, caught, benign, false_blocks))
    terms = TermFilter.read(SHIPPED_TERM_LIST)
    print("  term list alone:", describe(sensitive, blocked(terms, sensitive), benign, blocked(terms, benign)))
    model = OffensiveLanguageClassifier(ContentFilterSettings().threshold)
    print("  classifier alone:", describe(sensitive, blocked(model, sensitive), benign, blocked(model, benign)))
    assert (len(caught), len(sensitive)) == (334, 352)  # recall 0.9489
    assert [text for _, text in false_blocks] == [
        "A female dog is called a bitch in breeding registries.",
        "The ass is another name for a donkey in older English texts.",
    ]
    assert len(false_blocks) / len(benign) < 0.005  # 2/1218 = 0.0016


@pytest.mark.xfail(strict=True, reason="measured recall 0.9489 on the test split: the 0.95 target is not met")
def test_recall_reaches_the_target_on_the_test_split(
    test_split: tuple[Rows, Rows], measured: tuple[Rows, Rows]
) -> None:
    assert len(measured[0]) / len(test_split[0]) >= 0.95
