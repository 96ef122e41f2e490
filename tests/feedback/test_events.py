import json

import pytest

from feedback.errors import InvalidEventError, UnknownSchemaError
from feedback.events import AuditEvent, ChatMessage, FeedbackEvent, InteractionEvent, decode_event


def interaction(**overrides: object) -> InteractionEvent:
    fields: dict[str, object] = {
        "interaction_id": "a" * 32,
        "request_id": "req-1",
        "unit_id": "user-1",
        "arm": "champion",
        "role": "served",
        "model_version": "base",
        "deployment_id": "initial",
        "phase": "champion-only",
        "messages": (ChatMessage(role="user", content="hi"),),
        "completion": "hello",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "latency_ms": 12.5,
        "finish_reason": "stop",
        "confidence": 0.75,
    }
    fields.update(overrides)
    return InteractionEvent.model_validate(fields)


def test_interaction_round_trips() -> None:
    event = interaction()
    decoded = decode_event(event.encode())
    assert decoded == event
    assert decoded.type == "interaction"


def test_feedback_round_trips() -> None:
    event = FeedbackEvent(feedback_id="f-1", interaction_id="a" * 32, rating=5, comment="great")
    assert decode_event(event.encode()) == event


def test_feedback_must_say_something() -> None:
    with pytest.raises(ValueError, match="feedback needs a thumb, a rating, a comment or a correction"):
        FeedbackEvent(feedback_id="f-1", interaction_id="a" * 32)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "an event must be a JSON object"),
        (b'{"schema_version": 1, "type": "interaction"}', "interaction_id: Field required"),
        (b'{"schema_version": 1, "type": "nonsense"}', "Input tag 'nonsense' found using 'type'"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_invalid_events_are_refused_with_a_reason(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        decode_event(raw)


def test_rating_out_of_range_is_invalid() -> None:
    data = json.loads(FeedbackEvent(feedback_id="f", interaction_id="i", rating=3).encode())
    data["rating"] = 9
    with pytest.raises(InvalidEventError, match="rating: Input should be less than or equal to 5"):
        decode_event(json.dumps(data).encode())


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_unknown_schema_versions_are_flagged(version: object) -> None:
    data = json.loads(interaction().encode())
    data["schema_version"] = version
    with pytest.raises(UnknownSchemaError, match="unknown schema_version"):
        decode_event(json.dumps(data).encode())


def test_audit_round_trips_and_is_keyed_by_event_id() -> None:
    event = AuditEvent(actor="admin", action="deployment.promote", resource="adapter-1", details={"percent": 25})
    assert decode_event(event.encode()) == event
    assert event.kafka_key() == event.event_id.encode()
    assert interaction().kafka_key() == b"a" * 32


@pytest.mark.parametrize("version", [True, 1.0])
def test_versions_equal_to_one_but_not_int_are_unknown(version: object) -> None:
    data = json.loads(interaction().encode())
    data["schema_version"] = version
    with pytest.raises(UnknownSchemaError, match="unknown schema_version"):
        decode_event(json.dumps(data).encode())
