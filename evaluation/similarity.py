"""Answer agreement: normalization for "normalized match" and ROUGE-L between two answers.

- Normalized text: lower case, punctuation removed, runs of whitespace collapsed, trimmed (the same
  rule as ``NORMALIZE_SQL``, so counts in SQL and examples in Python agree).
- ROUGE-L (Lin, 2004) of a candidate against a reference, on normalized whitespace tokens: with
  ``L`` the length of their longest common subsequence, precision ``L / len(candidate)``, recall
  ``L / len(reference)`` and F1 ``2 P R / (P + R)`` (0 when ``L = 0``; 1 when both are empty).
"""

from __future__ import annotations

import re

NORMALIZE_SQL = "trim(regexp_replace(regexp_replace(lower({x}), '[^a-z0-9\\s]', '', 'g'), '\\s+', ' ', 'g'))"
_PUNCT = re.compile(r"[^a-z0-9\s]")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lower case, no punctuation, single spaces, trimmed."""
    return _SPACE.sub(" ", _PUNCT.sub("", text.lower())).strip()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) len(b)) time, O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of ``candidate`` against ``reference`` on normalized tokens."""
    cand, ref = normalize(candidate).split(), normalize(reference).split()
    if not cand and not ref:
        return 1.0
    common = lcs_length(cand, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(cand), common / len(ref)
    return 2 * precision * recall / (precision + recall)
