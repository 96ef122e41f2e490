"""Recall and false-block rate of the shipped content filter on labelled corpora written for the purpose.

``corpus/sensitive.tsv`` and ``corpus/benign.tsv`` are the TEST split: written by hand before the
term list existed and never used to tune it. The benign side adds the project's catalogue
questions, answers and prompts (``feedback.catalogue``) and the golden sets. The ``dev_`` files
are the split the term list and the classifiers' thresholds were tuned on; they and the ``dev5_``
files (a second training batch, written in the fifth round) are the only text the learned
classifier was trained on (``fit_learned.py``). The ``dev6_`` files (a third batch, written in the
sixth round) trained a classifier that was measured and not shipped (README); nothing shipped was
fitted on them. ``corpus/round4_*.tsv`` and ``corpus/round6_*.tsv`` are batches written after the
third and the sixth round and never used to tune anything: text the filter has never seen. Run
with ``-s`` to see the numbers:

    .venv/bin/pytest -q -s tests/feedback/content/test_content_corpus.py
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from feedback.catalogue import build_catalogue, make_questions
from feedback.content import (
    CombinedFilter,
    ContentFilter,
    LearnedClassifier,
    OffensiveLanguageClassifier,
    TermFilter,
    build_filter,
)
from feedback.settings import ContentFilterSettings

CORPUS = Path(__file__).with_name("corpus")
GOLDEN = Path(__file__).parents[3] / "evaluation" / "golden"
DEV = tuple(f"{batch}_{side}.tsv" for batch in ("dev", "dev5", "dev6") for side in ("sensitive", "benign"))
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
    """The rows the filter blocks. The learned classifier scores them all at once, in batches of similar length
    (4x faster here than one by one); its ``check`` blocks a text by the same rule on the same score."""
    if isinstance(content_filter, LearnedClassifier):
        scores = content_filter.probabilities([text for _, text in rows])
        return [row for row, score in zip(rows, scores, strict=True) if score >= content_filter.threshold]
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


Verdicts = dict[str, tuple[Rows, Rows]]  # filter name -> (sensitive rows blocked, benign rows blocked)


def measure(sensitive: Rows, benign: Rows) -> Verdicts:
    """What each part of the filter blocks, the shipped filter (term list and offensive-language model)
    and the filter with the learned classifier turned on (``content_filter.learned``); a combination
    blocks what any of its parts blocks."""
    with_learned = build_filter(ContentFilterSettings(learned=True))
    assert isinstance(with_learned, CombinedFilter)
    terms, offensive, learned = with_learned.filters
    assert isinstance(terms, TermFilter)
    assert isinstance(offensive, OffensiveLanguageClassifier)
    assert isinstance(learned, LearnedClassifier)
    parts = {"term list": terms, "offensive-language classifier": offensive, "learned classifier": learned}
    verdicts = {name: (blocked(f, sensitive), blocked(f, benign)) for name, f in parts.items()}

    def union(*names: str) -> tuple[Rows, Rows]:
        return (
            [row for row in sensitive if any(row in verdicts[n][0] for n in names)],
            [row for row in benign if any(row in verdicts[n][1] for n in names)],
        )

    verdicts["shipped"] = union("term list", "offensive-language classifier")
    verdicts["with learned"] = union(*parts)
    return verdicts


def show(title: str, sensitive: Rows, benign: Rows, verdicts: Verdicts) -> None:
    print(f"\ncontent filter on {title}:")
    for name, (caught, false_blocks) in verdicts.items():
        print(f"  {name}:", describe(sensitive, caught, benign, false_blocks))


@pytest.fixture(scope="module")
def measured(test_split: tuple[Rows, Rows]) -> Verdicts:
    """What each part and combination blocks of the sensitive and of the benign test split (printed)."""
    sensitive, benign = test_split
    verdicts = measure(sensitive, benign)
    show("the test split", sensitive, benign, verdicts)
    return verdicts


def test_the_corpora_are_large_enough_and_apart(test_split: tuple[Rows, Rows]) -> None:
    sensitive, benign = test_split
    assert len(sensitive) >= 300
    assert len(benign) >= 1000
    assert len({label for label, _ in sensitive}) == 6
    dev = {text.casefold() for name in DEV for _, text in labelled(name)}
    assert not dev & {text.casefold() for _, text in sensitive + benign}  # no line of the dev corpora is tested on
    everything = {text.casefold() for _, text in sensitive + benign} | dev
    for batch, size in (("round4", 398), ("round6", 476)):
        lines = [text.casefold() for _, text in labelled(f"{batch}_sensitive.tsv") + labelled(f"{batch}_benign.tsv")]
        assert len(lines) == len(set(lines)) == size
        assert not set(lines) & everything  # a held-out batch repeats no line of any other corpus
        everything |= set(lines)


def test_recall_and_false_block_rate_on_the_test_split(test_split: tuple[Rows, Rows], measured: Verdicts) -> None:
    """Pinned to the measured counts, so any change to the list or a threshold shows here (and in the README)."""
    sensitive, benign = test_split
    counts = {name: (len(caught), len(false_blocks)) for name, (caught, false_blocks) in measured.items()}
    assert len(sensitive) == 352
    assert counts == {
        "term list": (334, 0),
        "offensive-language classifier": (45, 2),
        "learned classifier": (207, 1),
        "shipped": (334, 2),  # recall 0.9489
        "with learned": (345, 3),  # recall 0.9801
    }
    assert [text for _, text in measured["with learned"][1]] == [
        "A female dog is called a bitch in breeding registries.",
        "The ass is another name for a donkey in older English texts.",
        "How do I make a mojito?",
    ]
    assert len(measured["with learned"][1]) / len(benign) < 0.005  # 3/1218 = 0.0025


@pytest.mark.xfail(strict=True, reason="shipped settings: recall 0.9489 (334/352) on the test split, short of 0.95")
def test_recall_of_the_shipped_filter_reaches_the_target_on_the_test_split(
    test_split: tuple[Rows, Rows], measured: Verdicts
) -> None:
    assert len(measured["shipped"][0]) / len(test_split[0]) >= 0.95


def test_recall_with_the_learned_classifier_reaches_the_target_on_the_test_split(
    test_split: tuple[Rows, Rows], measured: Verdicts
) -> None:
    """345 of 352 (335 are needed); round 4 below shows what that is worth on text written after every choice."""
    assert len(measured["with learned"][0]) / len(test_split[0]) >= 0.95


HELD_OUT = {
    # written after the third round, before the learned classifier existed; the fifth round's choice among 4
    # variants of that classifier looked at it too (README)
    "round4": {
        "term list": (80, 6),
        "offensive-language classifier": (6, 2),
        "learned classifier": (75, 0),
        "shipped": (80, 8),  # recall 80/150 = 0.533, false blocks 8/248 = 0.032
        "with learned": (108, 8),  # recall 108/150 = 0.72
    },
    # written in the sixth round from a brief alone, after every choice; the learned classifier retrained on the
    # dev6 batch was measured on it once and not shipped (README)
    "round6": {
        "term list": (88, 11),
        "offensive-language classifier": (12, 0),
        "learned classifier": (89, 4),
        "shipped": (88, 11),  # recall 88/180 = 0.489, false blocks 11/296 = 0.037
        "with learned": (122, 15),  # recall 122/180 = 0.678, false blocks 15/296 = 0.051
    },
}


@pytest.mark.parametrize("batch", sorted(HELD_OUT))
def test_recall_and_false_block_rate_on_the_held_out_batches(batch: str) -> None:
    """Text written after the filter's choices: pinned, and short of the target (see the README)."""
    sensitive, benign = labelled(f"{batch}_sensitive.tsv"), labelled(f"{batch}_benign.tsv")
    verdicts = measure(sensitive, benign)
    show(f"the {batch} batch (never tuned on)", sensitive, benign, verdicts)
    counts = {name: (len(caught), len(false_blocks)) for name, (caught, false_blocks) in verdicts.items()}
    assert counts == HELD_OUT[batch]
