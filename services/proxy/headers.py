"""Which headers cross the proxy: everything end to end (Authorization included), no hop-by-hop header.

Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, so they stop here, with any
header the ``Connection`` header names. ``Host`` and ``Content-Length`` of a request are set anew
for the upstream; ``Server`` and ``Date`` of an answer are the proxy's own (its server adds them).
The client's address is appended to ``X-Forwarded-For``.
"""

from __future__ import annotations

from collections.abc import Iterable

Raw = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer"}
    | {b"transfer-encoding", b"upgrade", b"proxy-connection"}
)
REQUEST_SET_ANEW = frozenset({b"host", b"content-length"})
ANSWER_SET_ANEW = frozenset({b"server", b"date"})
FORWARDED_FOR = b"x-forwarded-for"


def _connection_tokens(raw: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The header names that ``Connection`` marks as hop-by-hop."""
    return {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    }


def _end_to_end(raw: Raw, also_dropped: frozenset[bytes]) -> Raw:
    dropped = HOP_BY_HOP | also_dropped | _connection_tokens(raw)
    return [(name, value) for name, value in raw if name.lower() not in dropped]


def request_headers(raw: Raw, client_host: str | None) -> Raw:
    """The headers to send upstream for a request with ``raw`` headers from ``client_host``."""
    kept = _end_to_end(raw, REQUEST_SET_ANEW | {FORWARDED_FOR})
    if client_host is None:
        return kept + [(name, value) for name, value in raw if name.lower() == FORWARDED_FOR]
    earlier = [value for name, value in raw if name.lower() == FORWARDED_FOR]
    return [*kept, (FORWARDED_FOR, b", ".join([*earlier, client_host.encode("latin-1")]))]


def answer_headers(raw: Raw) -> Raw:
    """The headers to send the client for an upstream answer with ``raw`` headers (lower-cased names)."""
    return [(name.lower(), value) for name, value in _end_to_end(raw, ANSWER_SET_ANEW)]
