"""API keys: their shape, salted hashes, constant-time verification, the key book (pure unit tests)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from feedback.access import Principal
from feedback.apikeys import (
    MALFORMED_KEY,
    REVOKED_KEY,
    UNKNOWN_KEY,
    KeyBook,
    KeyRecord,
    new_key,
    parse_key,
    revoke,
    verify,
)
from feedback.errors import NotAuthenticated


def test_a_new_key_is_shown_once_and_stored_as_a_salted_hash() -> None:
    text, record = new_key("ci", "developer", created_by="ops")
    key_id, secret = parse_key(text)
    assert text == f"fwk_{key_id}_{secret}"
    assert (record.key_id, record.name, record.role, record.created_by, record.revoked_at) == (
        key_id,
        "ci",
        "developer",
        "ops",
        None,
    )
    assert len(secret) == 43  # 32 random bytes
    assert len(bytes.fromhex(record.salt)) == 16
    assert record.hash == hmac.new(bytes.fromhex(record.salt), secret.encode(), hashlib.sha256).hexdigest()
    assert secret not in record.model_dump_json()
    assert verify(record, secret)
    assert not verify(record, secret[:-1] + ("A" if secret[-1] != "A" else "B"))


def test_two_keys_never_share_id_secret_or_salt() -> None:
    (a, ra), (b, rb) = new_key("a", "user", "ops"), new_key("a", "user", "ops")
    assert parse_key(a)[1] != parse_key(b)[1]
    assert (ra.key_id, ra.salt, ra.hash) != (rb.key_id, rb.salt, rb.hash)


@pytest.mark.parametrize(
    "text", ["", "Bearer", "fwk_", "fwk_0123_abc", "sk-" + "a" * 48, "fwk_0123456789ABCDEF_" + "a" * 43]
)
def test_malformed_keys_are_refused(text: str) -> None:
    with pytest.raises(NotAuthenticated, match=MALFORMED_KEY.replace("(", r"\(").replace(")", r"\)")):
        parse_key(text)


def test_the_book_authenticates_known_keys_and_refuses_the_rest() -> None:
    text, record = new_key("alice", "user", "ops")
    other, _ = new_key("bob", "admin", "ops")  # never stored
    book = KeyBook([record])
    assert book.authenticate(text) == Principal(key_id=record.key_id, name="alice", role="user")
    assert book.authenticate(text) == Principal(key_id=record.key_id, name="alice", role="user")  # cached
    with pytest.raises(NotAuthenticated, match=UNKNOWN_KEY):
        book.authenticate(other)
    wrong_secret = f"fwk_{parse_key(text)[0]}_{parse_key(other)[1]}"
    with pytest.raises(NotAuthenticated, match=UNKNOWN_KEY):
        book.authenticate(wrong_secret)


def test_a_revoked_key_is_refused_even_after_it_was_cached() -> None:
    text, record = new_key("alice", "user", "ops")
    book = KeyBook([record])
    book.authenticate(text)
    revoked = revoke(record)
    book.put(revoked)
    assert revoked.revoked_at is not None
    with pytest.raises(NotAuthenticated, match=REVOKED_KEY):
        book.authenticate(text)
    assert [r.key_id for r in book.records()] == [record.key_id]


def test_a_record_round_trips_through_its_encoding() -> None:
    _, record = new_key("alice", "analyst", "ops")
    assert KeyRecord.model_validate_json(record.encode()) == record
