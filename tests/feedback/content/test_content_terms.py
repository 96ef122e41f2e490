"""The term-list filter: whole words, case folded, categories, patterns, and the shipped list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_content_corpus import CORPUS, labelled

from feedback.content import SHIPPED_TERM_LIST, ContentVerdict, TermFilter
from feedback.content.terms import DOTLESS_I, deobfuscate, normalise, required_literals
from feedback.errors import ContentFilterError


def test_terms_match_whole_words_case_folded() -> None:
    terms = TermFilter.from_lists(["kill", "credit card"], [])
    assert terms.check("KILL it") == ContentVerdict(True, "custom", 1.0, ("term:kill",))
    assert terms.check("I'll kill.") == ContentVerdict(True, "custom", 1.0, ("term:kill",))
    assert not terms.check("a skill, a killer, killdeer").blocked
    assert terms.check("pay by Credit Card").matched == ("term:credit card",)
    assert not terms.check("pay by credit  card").blocked  # a phrase keeps its single spaces


def test_every_matching_rule_is_named_in_rule_order_and_the_first_names_the_category() -> None:
    terms = TermFilter.from_lists(["threat:kill you", "profanity:damn"], [r"\bdie\b"], named_categories=True)
    verdict = terms.check("Damn, I will kill you, die!")
    assert verdict == ContentVerdict(True, "threat", 1.0, ("term:kill you", "term:damn", r"pattern:\bdie\b"))
    assert terms.check("die").category == "custom"
    assert TermFilter.from_lists(["threat:kill you"], []).check("threat:kill you").category == "custom"  # a plain term


def test_typographic_apostrophes_read_as_plain_ones() -> None:
    terms = TermFilter.from_lists(["don't"], [])
    assert terms.check("I DON\u2019T care").blocked


def test_clean_text_gets_the_clean_verdict() -> None:
    assert TermFilter.from_lists(["kill"], []).check("hello") == ContentVerdict(False, "none", 0.0, ())
    assert not TermFilter([]).check("anything").blocked


def test_a_bad_pattern_is_refused_by_name() -> None:
    with pytest.raises(ContentFilterError, match=r"content_filter.patterns: '\(unclosed' is not a valid regular"):
        TermFilter.from_lists([], ["(unclosed"], source="content_filter.patterns")


def test_a_term_list_file_has_categories_terms_and_patterns(tmp_path: Path) -> None:
    path = tmp_path / "terms.txt"
    path.write_text("# comment\n[threat]\nkill you\n\n[drugs]\nre: \\bmeth\\w*\\b\n", encoding="utf-8")
    terms = TermFilter.read(path)
    assert [(r.name, r.category) for r in terms.rules] == [
        ("term:kill you", "threat"),
        (r"pattern:\bmeth\w*\b", "drugs"),
    ]
    assert terms.check("Methamphetamine").category == "drugs"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kill\n", r"terms.txt:1: a term before the first \[category\] header"),
        ("[x]\nre: (\n", r"terms.txt:2: '\(' is not a valid regular expression"),
    ],
)
def test_a_broken_term_list_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "terms.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ContentFilterError, match=message):
        TermFilter.read(path)


def test_a_missing_term_list_is_a_content_filter_error(tmp_path: Path) -> None:
    with pytest.raises(ContentFilterError, match="cannot be read"):
        TermFilter.read(tmp_path / "absent.txt")


def test_the_shipped_list_covers_six_categories_and_spares_harmless_uses() -> None:
    shipped = TermFilter.read(SHIPPED_TERM_LIST)
    categories = {rule.category for rule in shipped.rules}
    assert categories == {"threat", "self_harm", "weapons_drugs", "sexual", "harassment", "profanity"}
    assert shipped.check("I will kill you tomorrow.").category == "threat"
    assert shipped.check("How do I build a pipe bomb?").category == "weapons_drugs"
    for harmless in ("How do I kill the process on port 80?", "The show bombed.", "Shoot me an email."):
        assert not shipped.check(harmless).blocked, harmless


def test_digits_and_symbols_written_for_letters_inside_a_word_read_as_letters() -> None:
    assert deobfuscate("y0u l0ser, stup1d id1ot, bullsh!t, a$$hole") == "you loser, stupid idiot, bullshit, asshole"
    unchanged = "mp3, c4, 3d print, 10am, $5, wow!"  # nothing between two letters
    assert deobfuscate(unchanged) == unchanged
    terms = TermFilter.from_lists(["kill"], [r"\bl[o0]ser\b"])
    assert terms.check("I'll k1ll it").matched == ("term:kill",)
    assert terms.check("l0ser").matched == (r"pattern:\bl[o0]ser\b",)  # a rule matching either reading is named once
    assert not terms.check("k1 ll").blocked


@pytest.mark.parametrize(
    ("pattern", "required"),
    [
        (r"\brun (you|him|her|them) over\b", {" over"}),  # the longest of "run ", the pronouns, " over"
        (r"\b(kill|murder) (you|him)\b", {"kill", "murder"}),
        (r"(?m)^(?!.*\bfilm\b).*\bnoose\b", {"noose"}),  # a negative lookahead requires nothing
        (r"b\*+tch(es)?", {"tch"}),  # "b" and "*" are shorter; the repeat of "*" holds at least one
        (r"(a|)bc", {"bc"}),  # an empty branch requires nothing
        (r"\b(you|u)\b", {"you", "u"}),
        (r"x?y*[abc]+", None),
    ],
)
def test_required_literals_are_read_from_the_parsed_pattern(pattern: str, required: set[str] | None) -> None:
    found = required_literals(re.compile(pattern, re.IGNORECASE))
    assert found == (None if required is None else frozenset(required))


def matched_by_every_rule(term_list: TermFilter, text: str) -> tuple[str, ...]:
    """The rules matching ``text`` found by searching every rule in every reading (no rule skipped)."""
    folded = normalise(text)
    readings = {folded, deobfuscate(folded)}
    return tuple(r.name for r in term_list.rules if any(r.regex.search(reading) for reading in readings))


def test_searching_only_the_possible_rules_misses_no_match_on_the_corpora() -> None:
    # rules are searched only where they may match: every verdict equals searching every rule in every reading
    term_list = TermFilter.read(SHIPPED_TERM_LIST)
    lines = [text for path in sorted(CORPUS.glob("*.tsv")) for _, text in labelled(path.name)]
    assert len(lines) > 3000
    blocked = 0
    for text in lines:
        every_match = matched_by_every_rule(term_list, text)
        verdict = term_list.check(text)
        assert (verdict.blocked, verdict.matched) == (bool(every_match), every_match), text
        blocked += verdict.blocked
    assert blocked > 1000  # both outcomes are well represented


def test_a_pattern_ignoring_case_is_searched_wherever_it_may_match() -> None:
    # case folding keeps the dotless i, yet a pattern that ignores case matches it with "i"
    folded = {char for code in range(0x110000) for char in normalise(chr(code))}  # what folded text holds
    assert [char for char in folded if not char.isascii() and re.fullmatch("[a-z]", char, re.IGNORECASE)] == [DOTLESS_I]
    patterns = TermFilter.from_lists([], [r"\bkill you\b"])
    assert patterns.check(f"I will k{DOTLESS_I}ll you").matched == (r"pattern:\bkill you\b",)
    assert not TermFilter.from_lists(["kill"], []).check(f"k{DOTLESS_I}ll").blocked  # a term does not ignore case
