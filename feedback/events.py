"""Event schemas: what travels through Kafka and lands in DuckDB.

Every event is a JSON object with ``event_id`` (a time-ordered UUIDv7 in hex), ``type``,
``schema_version`` and ``ts``. Changes within a schema version are additive only; a new version
comes with a DuckDB migration (see ``feedback.store``). Events are keyed in Kafka by
``interaction_id``, so all events of one interaction stay in order on one partition.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt, TypeAdapter, ValidationError, model_validator

from feedback.errors import InvalidEventError, UnknownSchemaError
from feedback.ids import new_id

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = frozenset({1})

Arm = Literal["champion", "challenger"]
Role = Literal["served", "shadow"]
# content_filter: the served answer was replaced by the refusal (or its stream stopped); shadow: it would have been
FinishReason = Literal["stop", "length", "error", "content_filter"]


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    schema_version: StrictInt = SCHEMA_VERSION  # strict: "1" or 1.0 is an unknown version, not 1
    ts: datetime = Field(default_factory=utc_now)

    def encode(self) -> bytes:
        """The event as compact UTF-8 JSON, the bytes sent to Kafka."""
        return self.model_dump_json().encode()

    def kafka_key(self) -> bytes:
        """The Kafka record key: events of one interaction share it, so they stay in order."""
        return self.event_id.encode()


class ChatMessage(BaseModel):
    """One message of a chat prompt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class InteractionEvent(_Event):
    """One response made for a request: the served one, or a shadow one."""

    type: Literal["interaction"] = "interaction"
    interaction_id: str = Field(min_length=1, max_length=64)  # raw (unsigned) id
    request_id: str = Field(min_length=1, max_length=128)
    unit_id: str = Field(max_length=256)  # the assignment unit (user, session or request)
    arm: Arm
    role: Role
    model_version: str
    deployment_id: str
    phase: str  # ramp phase: "shadow", "ab-5", ... or "champion-only"
    messages: tuple[ChatMessage, ...]
    completion: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_ms: float = Field(ge=0)
    ttft_ms: float | None = Field(default=None, ge=0)
    finish_reason: FinishReason | None
    confidence: float | None = Field(default=None, gt=0, le=1)
    error: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None

    def kafka_key(self) -> bytes:
        """Keyed by interaction id."""
        return self.interaction_id.encode()


class FeedbackEvent(_Event):
    """User feedback on an interaction: a thumb, a 1-5 rating, a comment and/or a corrected answer."""

    type: Literal["feedback"] = "feedback"
    feedback_id: str = Field(min_length=1, max_length=128)  # client-supplied, for idempotency
    interaction_id: str = Field(min_length=1, max_length=64)  # raw (unsigned) id
    user_id: str | None = Field(default=None, max_length=256)
    thumb: Literal["up", "down"] | None = None
    rating: int | None = Field(default=None, ge=1, le=5)
    comment: str | None = Field(default=None, max_length=10_000)
    correction: str | None = Field(default=None, max_length=100_000)

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackEvent:
        if self.thumb is None and self.rating is None and not self.comment and not self.correction:
            raise ValueError("feedback needs a thumb, a rating, a comment or a correction")
        return self

    def kafka_key(self) -> bytes:
        """Keyed by interaction id, like the interaction it rates."""
        return self.interaction_id.encode()


class AuditEvent(_Event):
    """Who did what to which resource, and whether it was allowed; kept in DuckDB for good."""

    type: Literal["audit"] = "audit"
    actor: str = Field(min_length=1, max_length=256)  # the principal: a user, a token name, "decision-engine"
    action: str = Field(min_length=1, max_length=128)  # e.g. "deployment.promote", "analytics.query"
    resource: str | None = Field(default=None, max_length=1024)  # what the action was on
    outcome: Literal["allowed", "denied", "error"] = "allowed"
    reason: str | None = Field(default=None, max_length=10_000)  # why (a decision's reasons, a refusal)
    details: dict[str, JsonValue] = Field(default_factory=dict)  # action-specific facts


AnyEvent = InteractionEvent | FeedbackEvent | AuditEvent
Event = Annotated[AnyEvent, Field(discriminator="type")]
_EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(Event)


def decode_event(raw: bytes) -> AnyEvent:
    """Parse and validate one event, or raise InvalidEventError / UnknownSchemaError.

    The fast path validates the bytes directly (pydantic-core's JSON parser, no ``dict`` in
    between); only a refused event is parsed again to say precisely why.
    """
    try:
        event = _EVENT_ADAPTER.validate_json(raw)
    except ValidationError:
        return _diagnose(raw)
    if not _known_version(event.schema_version):
        raise UnknownSchemaError(f"unknown schema_version {event.schema_version!r}")
    return event


def _known_version(version: object) -> bool:
    # type() and not isinstance: True and 1.0 compare equal to 1 but are not version 1
    return type(version) is int and version in KNOWN_SCHEMA_VERSIONS


def _diagnose(raw: bytes) -> AnyEvent:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEventError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidEventError("an event must be a JSON object")
    version = obj.get("schema_version")
    if not _known_version(version):
        raise UnknownSchemaError(f"unknown schema_version {version!r}")
    try:
        return _EVENT_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "event"
        raise InvalidEventError(f"{field}: {first['msg']}") from exc
