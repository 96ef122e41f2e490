"""PII redaction: find personal data in free text and replace it with a typed placeholder.

Detected kinds, each replaced by ``[KIND]``:

- ``EMAIL``: ``local@domain.tld``.
- ``PHONE``: international numbers written with ``+`` (8-15 digits, E.164), North American numbers
  (``(415) 555-2671``, ``415.555.2671``, ``+1 ...``), 11-digit mobile numbers (``138 1234 5678``)
  and 11-digit national numbers starting with 0 (``07700 900123``, ``020 7946 0958``).
- ``NATIONAL_ID``: US social security numbers (``123-45-6789``, or nine digits after "SSN"), UK
  national insurance numbers (``AB 12 34 56 C``), 18-character resident ids whose ISO 7064
  checksum and birth date are valid.
- ``CARD``: 13-19 digit card numbers (spaces or dashes allowed) that pass the Luhn check and start
  like a payment card (2-6).
- ``IP``: IPv4 dotted quads (every octet <= 255) and IPv6 addresses (validated by ``ipaddress``).

Look-alikes are kept on purpose: a number right after a label such as "order", "invoice",
"tracking", "ISBN" or "version" is a reference, not personal data; dates, prices and version
strings do not match the shapes above (three-part versions, octets above 255, ISBN prefixes 978/979
fail the card prefix, and so on). ``tests/feedback/test_pii.py`` measures recall and precision on a
labelled corpus of both.

Redaction runs in batches on the lake export path (``redact_batch``), never on ingest.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Literal

Kind = Literal["EMAIL", "PHONE", "NATIONAL_ID", "CARD", "IP"]


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One piece of personal data found in a text."""

    kind: Kind
    start: int
    end: int
    text: str


# A number that follows one of these labels is a reference (order, ISBN, version...), not PII.
_REFERENCE_LABEL = re.compile(
    r"(?:\b(?:order|invoice|tracking|ticket|case|ref|reference|isbn(?:-1[03])?|sku|part|serial|"
    r"confirmation|booking|version|release|build|ver|model|item|product|account)"
    r"(?:\s*(?:no\.?|nr\.?|number|num|id|code))?\s*[:#]?\s*#?|\bv)$",
    re.IGNORECASE,
)
_LOOKBACK = 40  # characters before a match searched for a reference label

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])")
_PHONE_INTERNATIONAL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,6}(?![\d-])")
_PHONE_NANP = re.compile(
    r"(?<![\w.+-])(?:1[ .-]?)?(?:\([2-9]\d{2}\)\s?|[2-9]\d{2}[ .-]?)[2-9]\d{2}[ .-]?\d{4}(?![\w-]|\.\d)"
)
_PHONE_MOBILE_11 = re.compile(r"(?<![\w.+-])1[3-9]\d(?:[ -]?\d{4}){2}(?![\w-]|\.\d)")
_PHONE_NATIONAL_0 = re.compile(r"(?<![\w.+-])0[1-37-9]\d{1,3}[ -]?\d{3,4}[ -]?\d{3,4}(?![\w-]|\.\d)")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_SSN_LABELLED = re.compile(r"\b(?:ssn|social security(?: number)?)\s*(?:no\.?|number|#)?\s*:?\s*(\d{9})(?!\d)", re.I)
_NINO = re.compile(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_RESIDENT_ID = re.compile(r"(?<![\w-])\d{17}[\dXx](?![\w-])")
_CARD = re.compile(r"(?<![\w.-])[2-6]\d{3}(?:[ -]?\d{2,7}){2,4}(?![\w-]|\.\d)")
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"
)
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\w)")

_RESIDENT_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RESIDENT_ID_CHECK = "10X98765432"


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn (mod 10) check used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _is_card(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _is_international_phone(text: str) -> bool:
    return 8 <= len(_digits(text)) <= 15


def _is_national_0_phone(text: str) -> bool:
    return len(_digits(text)) == 11


def _is_resident_id(text: str) -> bool:
    body, check = text[:17], text[17].upper()
    total = sum(int(d) * w for d, w in zip(body, _RESIDENT_ID_WEIGHTS, strict=True))
    if _RESIDENT_ID_CHECK[total % 11] != check:
        return False
    try:
        born = date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        return False
    return born.year >= 1900


def _is_ipv6(text: str) -> bool:
    if not any(c.isalnum() for c in text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _always(_text: str) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class _Detector:
    kind: Kind
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] = _always
    reference_exempt: bool = True  # a preceding "order"/"ISBN"/"version" label makes it a look-alike
    group: int = 0


# Earlier detectors win when two matches overlap by the same length (a resident id beats a card).
_DETECTORS: tuple[_Detector, ...] = (
    _Detector("EMAIL", _EMAIL, reference_exempt=False),
    _Detector("NATIONAL_ID", _RESIDENT_ID, _is_resident_id),
    _Detector("NATIONAL_ID", _SSN),
    _Detector("NATIONAL_ID", _SSN_LABELLED, reference_exempt=False, group=1),
    _Detector("NATIONAL_ID", _NINO, reference_exempt=False),
    _Detector("CARD", _CARD, _is_card),
    _Detector("IP", _IPV6, _is_ipv6),
    _Detector("IP", _IPV4),
    _Detector("PHONE", _PHONE_INTERNATIONAL, _is_international_phone),
    _Detector("PHONE", _PHONE_NANP),
    _Detector("PHONE", _PHONE_MOBILE_11),
    _Detector("PHONE", _PHONE_NATIONAL_0, _is_national_0_phone),
)

# Texts without any of these characters cannot hold PII of the kinds above: skip them quickly.
_MAY_HOLD_PII = re.compile(r"[\d@:]")


def find_pii(text: str) -> list[PiiMatch]:
    """Every piece of personal data in ``text``, in order, without overlaps (the longest wins)."""
    if not _MAY_HOLD_PII.search(text):
        return []
    candidates: list[tuple[int, int, int, PiiMatch]] = []
    for rank, detector in enumerate(_DETECTORS):
        for m in detector.pattern.finditer(text):
            start, end = m.span(detector.group)
            found = m.group(detector.group)
            if not detector.valid(found):
                continue
            if detector.reference_exempt and _REFERENCE_LABEL.search(text[max(0, start - _LOOKBACK) : start]):
                continue
            candidates.append((start, -(end - start), rank, PiiMatch(detector.kind, start, end, found)))
    chosen: list[PiiMatch] = []
    for _start, _neg_len, _rank, match in sorted(candidates, key=lambda c: (c[1], c[0], c[2])):
        if all(match.end <= other.start or match.start >= other.end for other in chosen):
            chosen.append(match)
    return sorted(chosen, key=lambda m: m.start)


def redact(text: str) -> str:
    """``text`` with each piece of personal data replaced by ``[KIND]``."""
    matches = find_pii(text)
    if not matches:
        return text
    parts: list[str] = []
    cursor = 0
    for match in matches:
        parts.append(text[cursor : match.start])
        parts.append(f"[{match.kind}]")
        cursor = match.end
    parts.append(text[cursor:])
    return "".join(parts)


def redact_batch(texts: Iterable[str | None]) -> list[str | None]:
    """Redact a column of texts (``None`` stays ``None``): the lake export's entry point."""
    return [None if text is None else redact(text) for text in texts]
