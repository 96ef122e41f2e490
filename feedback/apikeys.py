"""API keys: made once, stored only as a salted hash on the compacted ``keys`` topic, verified in constant time.

A key reads ``fwk_<key_id>_<secret>``: ``key_id`` (16 hex digits) names its record, ``secret`` is
32 random bytes from :mod:`secrets` (URL-safe base64). It is shown once, at creation; the record
keeps ``HMAC-SHA256(salt, secret)`` with a per-key 16-byte salt. A slow KDF (scrypt, argon2) exists
to stretch guessable passwords; a 256-bit random secret cannot be guessed, so one keyed hash is as
strong and costs a microsecond instead of tens of milliseconds per request. Verified keys are
still cached (:class:`KeyBook`), so a request costs one dictionary lookup plus the revocation check.

Records are keyed by ``key_id`` on the compacted ``keys`` topic; revoking writes the record again
with ``revoked_at``. Every gateway replica and the worker follow the topic (:class:`KeyWatcher`),
so a revoked key is refused everywhere within a poll interval.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from feedback.access import Principal, Role
from feedback.errors import NotAuthenticated
from feedback.events import utc_now
from feedback.follower import TopicFollower, publish_record, read_topic
from feedback.settings import KafkaSettings

log = logging.getLogger(__name__)

PREFIX = "fwk"
_KEY = re.compile(r"^fwk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")  # 32 bytes are 43 URL-safe base64 characters
_CACHE_SIZE = 10_000  # verified keys remembered; beyond this the cache starts afresh

NO_KEY = "this endpoint needs an Authorization: Bearer <API key> header"
MALFORMED_HEADER = "the Authorization header must read Bearer <API key>"
MALFORMED_KEY = "the bearer token is not a flywheel API key (fwk_<id>_<secret>)"
UNKNOWN_KEY = "the API key is not valid"  # unknown id or wrong secret: the same message for both
REVOKED_KEY = "the API key was revoked"


class KeyRecord(BaseModel):
    """One API key as stored: never the secret, only its salted hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    name: str = Field(min_length=1, max_length=100)
    role: Role
    salt: str  # hex, 16 bytes
    hash: str  # hex HMAC-SHA256(salt, secret)
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None

    def principal(self) -> Principal:
        """Who a request with this key acts as."""
        return Principal(key_id=self.key_id, name=self.name, role=self.role)

    def encode(self) -> bytes:
        """The record's value on the keys topic."""
        return self.model_dump_json().encode()


def _digest(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()


def new_key(name: str, role: Role, created_by: str) -> tuple[str, KeyRecord]:
    """A new key: its text (to show once) and the record to store."""
    key_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_bytes(16)
    record = KeyRecord(
        key_id=key_id,
        name=name,
        role=role,
        salt=salt.hex(),
        hash=_digest(salt, secret),
        created_at=utc_now(),
        created_by=created_by,
    )
    return f"{PREFIX}_{key_id}_{secret}", record


def parse_key(text: str) -> tuple[str, str]:
    """``(key_id, secret)`` of a key's text, or NotAuthenticated when it has not the key's shape."""
    match = _KEY.match(text)
    if match is None:
        raise NotAuthenticated(MALFORMED_KEY)
    return match.group(1), match.group(2)


def verify(record: KeyRecord, secret: str) -> bool:
    """Whether ``secret`` is the record's secret (constant-time comparison of the hashes)."""
    return hmac.compare_digest(_digest(bytes.fromhex(record.salt), secret), record.hash)


def revoke(record: KeyRecord) -> KeyRecord:
    """The record revoked now."""
    return record.model_copy(update={"revoked_at": utc_now()})


class KeyBook:
    """The key records this process knows, by id, and the check of a presented key (thread-safe)."""

    def __init__(self, records: tuple[KeyRecord, ...] | list[KeyRecord] = ()) -> None:
        self._records = {r.key_id: r for r in records}
        self._verified: dict[str, KeyRecord] = {}  # key text -> the record it verified against
        self._lock = threading.Lock()

    def put(self, record: KeyRecord) -> None:
        """Add or replace a record (a revocation replaces the record)."""
        with self._lock:
            self._records[record.key_id] = record

    def records(self) -> list[KeyRecord]:
        """Every record, oldest first."""
        with self._lock:
            return sorted(self._records.values(), key=lambda r: (r.created_at, r.key_id))

    def get(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id``, if known."""
        with self._lock:
            return self._records.get(key_id)

    def authenticate(self, text: str) -> Principal:
        """The principal of a presented key, or NotAuthenticated (malformed, unknown, wrong secret, revoked)."""
        key_id, secret = parse_key(text)
        with self._lock:
            record = self._records.get(key_id)
            cached = self._verified.get(text)
        if record is None:
            raise NotAuthenticated(UNKNOWN_KEY)
        if cached is not record:  # first use, or the record changed since: hash once and remember
            if not verify(record, secret):
                raise NotAuthenticated(UNKNOWN_KEY)
            with self._lock:
                if len(self._verified) >= _CACHE_SIZE:
                    self._verified.clear()
                self._verified[text] = record
        if record.revoked_at is not None:
            raise NotAuthenticated(REVOKED_KEY)
        return record.principal()


def authenticate_header(book: KeyBook, authorization: str | None) -> Principal:
    """The principal of an ``Authorization: Bearer <key>`` header value, or NotAuthenticated saying why."""
    if not authorization:
        raise NotAuthenticated(NO_KEY)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated(MALFORMED_HEADER)
    return book.authenticate(token.strip())


def decode_record(value: bytes) -> KeyRecord | None:
    """A record from the topic, or None (logged) when it cannot be read."""
    try:
        return KeyRecord.model_validate_json(value)
    except ValidationError as exc:
        log.error("ignoring an unreadable key record: %s", exc.errors()[0]["msg"])
        return None


class KeyWatcher(TopicFollower):
    """Follows the keys topic into a :class:`KeyBook`."""

    def __init__(self, kafka: KafkaSettings, book: KeyBook) -> None:
        super().__init__(kafka, kafka.topics.keys)
        self.book = book

    def describe(self) -> str:
        """The keys kept while the topic is unreachable."""
        return f"{len(self.book.records())} keys"

    def receive(self, key: bytes | None, value: bytes | None) -> None:
        """Store each readable record under its id."""
        record = decode_record(value) if value is not None else None
        if record is not None and key == record.key_id.encode():
            self.book.put(record)


def publish_key(kafka: KafkaSettings, record: KeyRecord) -> None:
    """Write a key record to the keys topic (KafkaUnavailableError when the broker does not take it)."""
    publish_record(kafka, kafka.topics.keys, record.key_id.encode(), record.encode())


def read_keys(kafka: KafkaSettings) -> KeyBook:
    """Every key record on the topic, read once (KafkaUnavailableError when unreachable)."""
    records = (decode_record(value) for value in read_topic(kafka, kafka.topics.keys).values())
    return KeyBook([r for r in records if r is not None])
