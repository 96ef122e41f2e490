"""The term-list filter: sensitive words and phrases (whole words, case folded) and regular expressions.

A term list is a text file of ``[category]`` sections; each line below a header is a term, or a
regular expression after ``re:``; ``#`` starts a comment line. Terms match as whole words: ``kill``
matches "Kill!" but not "skill" or "killer". Text and terms are case folded and typographic
apostrophes read as ``'``; digits and symbols written for letters inside a word (``k1ll``, ``l0ser``) are
read as those letters too. The curation's ``content`` stage uses this same filter.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.content.verdict import CLEAN, ContentVerdict
from feedback.errors import ContentFilterError

SHIPPED_TERM_LIST = Path(__file__).with_name("terms.txt")
CUSTOM_CATEGORY = "custom"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_LEET_RUN = re.compile(r"(?<=[a-z])[013457@$!]+(?=[a-z])")
_WORD = re.compile(r"\w+")
DOTLESS_I = "\u0131"  # what a pattern ignoring case matches with "i", though case folding keeps it
# the parsed form of a pattern, which :func:`required_literals` reads (private modules, hence untyped)
sre: Any = importlib.import_module("re._constants")
sre_parse: Any = importlib.import_module("re._parser")


@dataclass(frozen=True, slots=True)
class Rule:
    """One term or pattern: its name in verdicts (``term:...`` or ``pattern:...``), category and regex."""

    name: str
    category: str
    regex: re.Pattern[str]


def normalise(text: str) -> str:
    """Case folded, with typographic apostrophes as ``'``."""
    return text.translate(_APOSTROPHES).casefold()


def deobfuscate(folded: str) -> str:
    """Digits and symbols written for letters inside a word read as those letters (``id1ot``, ``l0ser``, ``bullsh!t``).

    Only a run between two letters changes, so numbers, prices and codes such as ``mp3`` or ``c4`` stay as
    they are.
    """
    return _LEET_RUN.sub(lambda run: run.group().translate(_LEET), folded)


def term_rule(term: str, category: str) -> Rule:
    """A whole-word, case-folded rule for ``term``."""
    regex = re.compile(rf"(?<!\w){re.escape(normalise(term))}(?!\w)")
    return Rule(f"term:{term}", category, regex)


def pattern_rule(pattern: str, category: str, source: str) -> Rule:
    """A case-folded rule for the regular expression ``pattern``.

    Raises:
        ContentFilterError: the pattern does not compile (the message names ``source``).
    """
    try:
        regex = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ContentFilterError(f"{source}: {pattern!r} is not a valid regular expression: {exc}") from exc
    return Rule(f"pattern:{pattern}", category, regex)


def required_literals(regex: re.Pattern[str]) -> frozenset[str] | None:
    """Lower-case strings of which every match of ``regex`` on case-folded text contains at least one.

    Read from the parsed pattern: a run of ASCII literals, a group, an alternation whose every branch
    has such strings, or an item repeated at least once. Of a sequence's candidates, the one whose
    shortest string is longest (then the fewest strings). None when nothing is known (an optional
    or empty branch, a pattern the parser does not read): such a pattern is always searched.
    """
    try:
        return _required(sre_parse.parse(regex.pattern, regex.flags))
    except Exception:  # a private parser: whatever it does, the pattern is searched in full
        return None


def _required(sequence: Any) -> frozenset[str] | None:
    candidates: list[frozenset[str]] = []
    run: list[str] = []
    for op, arg in sequence:
        if op is sre.LITERAL and arg < 128:
            run.append(chr(arg).lower())
            continue
        if run:
            candidates.append(frozenset({"".join(run)}))
            run = []
        found: frozenset[str] | None = None
        if op is sre.SUBPATTERN:
            found = _required(arg[-1])
        elif op is sre.BRANCH:
            branches = [_required(branch) for branch in arg[1]]
            found = frozenset().union(*branches) if all(branches) else None  # type: ignore[arg-type]
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT) and arg[0] >= 1:
            found = _required(arg[2])
        if found:
            candidates.append(found)
    if run:
        candidates.append(frozenset({"".join(run)}))
    return max(candidates, key=lambda c: (min(map(len, c)), -len(c)), default=None)


class TermFilter:
    """Blocks a text in which any rule matches; rules are tried in order and the first names the category."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        # Each rule is searched only in a text that may match it (:meth:`_possible`), about 14x faster on clean
        # text than searching every rule. A term needs its first word as a whole word of the text: the term's
        # own boundary precedes the word, and what follows the word in the term is not a word character. A
        # pattern needs one of its required strings (:func:`required_literals`). One alternation of all the
        # patterns was 8x slower than searching each: few share a prefix.
        self._unindexed: list[int] = []  # rules searched in every text
        self._by_word: dict[str, list[int]] = {}  # a term's first word -> the terms
        self._by_string: dict[str, list[int]] = {}  # a pattern's required string -> the patterns
        for i, rule in enumerate(self.rules):
            if rule.name.startswith("term:"):
                word = _WORD.match(normalise(rule.name.removeprefix("term:")))
                strings = frozenset({word.group()}) if word else None
                index = self._by_word
            else:
                strings = required_literals(rule.regex)
                index = self._by_string
            for string in strings or ():
                index.setdefault(string, []).append(i)
            if strings is None:
                self._unindexed.append(i)
        self._by_pair: dict[str, list[str]] = {}  # required strings by their first two characters
        for string in self._by_string:
            self._by_pair.setdefault(string[:2], []).append(string)

    @classmethod
    def from_lists(
        cls,
        terms: Iterable[str],
        patterns: Iterable[str],
        *,
        category: str = CUSTOM_CATEGORY,
        source: str = "patterns",
        named_categories: bool = False,
    ) -> TermFilter:
        """Terms first, then patterns; with ``named_categories`` a term written ``category:term`` gets that category."""
        rules = [
            term_rule(*_split_category(term, category)) if named_categories else term_rule(term, category)
            for term in terms
        ]
        rules += [pattern_rule(pattern, category, source) for pattern in patterns]
        return cls(rules)

    @classmethod
    def read(cls, path: Path) -> TermFilter:
        """The rules of a term-list file (see the module docstring).

        Raises:
            ContentFilterError: the file cannot be read, has a line outside a section, or a bad pattern.
        """
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ContentFilterError(f"term list {path} cannot be read: {exc}") from exc
        return cls(_parse(lines, str(path)))

    def check(self, text: str) -> ContentVerdict:
        """Blocked when a rule matches the text or its :func:`deobfuscate` reading; ``matched`` lists every
        matching rule, in rule order."""
        folded = normalise(text)
        plain = deobfuscate(folded)
        readings = (folded,) if plain == folded else (folded, plain)
        hits = {i for reading in readings for i in self._possible(reading) if self.rules[i].regex.search(reading)}
        if not hits:
            return CLEAN
        matched = [self.rules[i] for i in sorted(hits)]
        return ContentVerdict(True, matched[0].category, 1.0, tuple(rule.name for rule in matched))

    def _possible(self, folded: str) -> list[int]:
        """The rules that may match ``folded`` (the others cannot): terms whose first word it has as a whole
        word, patterns whose required strings it holds, and the rules without either."""
        possible = list(self._unindexed)
        for word in self._by_word.keys() & _WORD.findall(folded):
            possible += self._by_word[word]
        # a pattern ignores case, and so its "i" matches the dotless i, which case folding keeps (the only
        # character that folds to no ASCII letter yet matches one; a test runs through every character)
        text = folded.replace(DOTLESS_I, "i")
        pairs = {text[i : i + 2] for i in range(len(text) - 1)}.union(text)  # and each character alone
        for pair in pairs.intersection(self._by_pair):
            for string in self._by_pair[pair]:
                if string in text:
                    possible += self._by_string[string]
        return possible

    def __add__(self, other: TermFilter) -> TermFilter:
        return TermFilter(self.rules + other.rules)


def _split_category(term: str, default: str) -> tuple[str, str]:
    category, sep, rest = term.partition(":")
    if sep and rest.strip() and re.fullmatch(r"[a-z_]+", category):
        return rest.strip(), category
    return term, default


def _parse(lines: Sequence[str], source: str) -> list[Rule]:
    rules: list[Rule] = []
    category: str | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if header := re.fullmatch(r"\[([a-z_]+)\]", line):
            category = header.group(1)
        elif category is None:
            raise ContentFilterError(f"{source}:{number}: a term before the first [category] header")
        elif line.startswith("re:"):
            rules.append(pattern_rule(line[3:].strip(), category, f"{source}:{number}"))
        else:
            rules.append(term_rule(line, category))
    return rules
