"""The classifier filter, the combination of filters, building the configured filter, and streaming checks."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from feedback.content import (
    CombinedFilter,
    ContentVerdict,
    OffensiveLanguageClassifier,
    StreamCheck,
    TermFilter,
    build_filter,
)
from feedback.settings import ContentFilterSettings


class FakeFilter:
    """A fixed verdict for every text (a pure unit-test stand-in)."""

    def __init__(self, verdict: ContentVerdict) -> None:
        self.verdict = verdict

    def check(self, text: str) -> ContentVerdict:
        return self.verdict


@pytest.fixture(scope="module")
def classifier() -> OffensiveLanguageClassifier:
    return OffensiveLanguageClassifier(threshold=0.6)


def test_the_classifier_loads_from_its_wheel_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OffensiveLanguageClassifier(threshold=0.5)


def test_the_classifier_blocks_insults_and_passes_questions(classifier: OffensiveLanguageClassifier) -> None:
    insult = classifier.check("you are a stupid useless piece of garbage")
    assert (insult.blocked, insult.category, insult.matched) == (True, "offensive", ("classifier:offensive",))
    assert insult.score >= 0.6
    question = classifier.check("What is the capital of France?")
    assert (question.blocked, question.category, question.matched) == (False, "none", ())
    assert 0 <= question.score < 0.6
    assert classifier.probabilities(["What is the capital of France?"]) == [question.score]


def test_the_classifier_threshold_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got 1"):
        OffensiveLanguageClassifier(threshold=1)


def test_a_combination_blocks_what_any_filter_blocks_and_the_first_names_the_category() -> None:
    clean = FakeFilter(ContentVerdict(False, score=0.3))
    terms = FakeFilter(ContentVerdict(True, "threat", 1.0, ("term:a",)))
    model = FakeFilter(ContentVerdict(True, "offensive", 0.9, ("classifier:offensive",)))
    assert CombinedFilter([clean, terms, model]).check("x") == ContentVerdict(
        True, "threat", 1.0, ("term:a", "classifier:offensive")
    )
    assert CombinedFilter([model, clean]).check("x").category == "offensive"
    assert CombinedFilter([clean, clean]).check("x") == ContentVerdict(False, "none", 0.3, ())


def test_build_filter_joins_the_shipped_list_the_extra_terms_and_the_classifier(tmp_path: Path) -> None:
    settings = ContentFilterSettings(
        terms=("threat:blue moon", "zebra"), patterns=(r"\bfoo\d+\b",), classifier=False, learned=False
    )
    built = build_filter(settings)
    assert isinstance(built, TermFilter)
    assert built.check("once in a blue moon").category == "threat"
    assert built.check("a zebra").category == "custom"
    assert built.check("foo42").matched == (r"pattern:\bfoo\d+\b",)
    assert built.check("Go fuck yourself").category == "profanity"  # the shipped list is still there
    own = tmp_path / "terms.txt"
    own.write_text("[mine]\nzebra\n", encoding="utf-8")
    only_own = build_filter(ContentFilterSettings(term_list=own, classifier=False, learned=False))
    assert only_own.check("a zebra").category == "mine"
    assert not only_own.check("Go fuck yourself").blocked
    assert isinstance(build_filter(ContentFilterSettings()), CombinedFilter)


def stream(check: StreamCheck, pieces: list[str]) -> tuple[list[str], ContentVerdict]:
    """What goes out of each piece and then of the end, until a verdict blocks."""
    sent = []
    for piece in pieces:
        out, verdict = check.feed(piece)
        if verdict.blocked:
            return sent, verdict
        sent.append(out)
    out, verdict = check.finish()
    return ([*sent, out] if not verdict.blocked else sent), verdict


def test_a_stream_releases_only_checked_text_and_never_half_a_word() -> None:
    terms = TermFilter.from_lists(["kill", "go away"], [])
    sent, verdict = stream(StreamCheck(terms), ["The ski", "ll of it", " is skil", "l."])
    assert (sent, verdict.blocked) == (["The ", "skill of ", "it is ", "skill.", ""], False)
    sent, verdict = stream(StreamCheck(terms), ["Now k", "i", "ll it."])
    assert (sent, verdict.matched) == (["Now ", ""], ("term:kill",))
    sent, verdict = stream(StreamCheck(terms), ["go ", "away"])  # blocked only once the whole text is known
    assert (sent, verdict.matched) == (["go ", ""], ("term:go away",))
    sent, verdict = stream(StreamCheck(terms), ["killdeer"])  # a term that starts a longer word waits for it
    assert (sent, verdict.blocked) == (["", "killdeer"], False)


def test_a_stream_runs_the_whole_filter_at_each_sentence_end_and_the_terms_at_each_word() -> None:
    terms = TermFilter.from_lists(["kill"], [])
    model = CountingFilter(blocks="poison")
    check = StreamCheck(CombinedFilter([terms, model]))
    sent, verdict = stream(check, ["Hello the", "re, my ", "friend. How ", "are you", "?"])
    assert (sent, verdict.blocked) == (["Hello ", "there, my ", "friend. How ", "are ", "you?", ""], False)
    whole = "Hello there, my friend. How are you?"
    assert model.seen == ["Hello there, my friend. How ", whole]  # one sentence end, then the end
    sent, verdict = stream(StreamCheck(CombinedFilter([terms, model])), ["Rat poison is ", "bad. Yes"])
    assert (sent, verdict.category) == (["Rat poison is "], "model")  # the model sees it at the sentence end
    only_model = StreamCheck(model)  # no term list: text waits for each sentence end
    assert only_model.feed("Hello there ") == ("", ContentVerdict(False))
    assert only_model.feed("friend. Bye")[0] == "Hello there friend. "


class CountingFilter:
    """Blocks texts containing one word and remembers every text it saw (a pure unit-test stand-in)."""

    def __init__(self, blocks: str) -> None:
        self.blocks = blocks
        self.seen: list[str] = []

    def check(self, text: str) -> ContentVerdict:
        self.seen.append(text)
        return ContentVerdict(True, "model", 0.9) if self.blocks in text else ContentVerdict(False, score=0.1)
