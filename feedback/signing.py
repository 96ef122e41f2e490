"""Signed interaction ids: the gateway signs every id it hands out, so feedback for an id it never
issued is refused by checking the signature alone, without a database lookup.

A signed id reads ``<32 hex digits>.<16 bytes of HMAC-SHA256, base64url>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from feedback.errors import SignatureError

_RAW_ID = re.compile(r"[0-9a-f]{32}")
_MAC_BYTES = 16


def _mac(raw_id: str, key: str) -> str:
    digest = hmac.new(key.encode(), raw_id.encode(), hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_id(raw_id: str, key: str) -> str:
    """Sign a raw 32-hex-digit id with ``key``."""
    if not _RAW_ID.fullmatch(raw_id):
        raise ValueError(f"not a raw id: {raw_id!r}")
    return f"{raw_id}.{_mac(raw_id, key)}"


def verify_id(signed_id: str, key: str) -> str:
    """Return the raw id inside ``signed_id``, or raise SignatureError when it was not signed by ``key``."""
    raw_id, _, mac = signed_id.partition(".")
    if not _RAW_ID.fullmatch(raw_id) or not mac:
        raise SignatureError("malformed interaction id")
    if not hmac.compare_digest(mac, _mac(raw_id, key)):
        raise SignatureError("interaction id signature does not verify")
    return raw_id
