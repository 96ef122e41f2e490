"""The compiled decoder agrees with the pydantic models: same fields, same verdicts, same reasons."""

import json
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from pipeline_events import audit, feedback, interaction
from pydantic import BaseModel, field_validator

from feedback.codec import FAST_TYPES, _struct, decode_fast, to_fast
from feedback.errors import InvalidEventError, UnknownSchemaError
from feedback.events import AuditEvent, FeedbackEvent, InteractionEvent, decode_event

GOOD = interaction(7).encode()


def as_dict(struct: msgspec.Struct) -> dict[str, object]:
    return json.loads(msgspec.json.encode(struct))


def test_structs_have_the_models_fields() -> None:
    names = {kind: set(t.__struct_fields__) for t, kind in FAST_TYPES.items()}
    assert names == {
        "interaction": set(InteractionEvent.model_fields) - {"type"},
        "feedback": set(FeedbackEvent.model_fields) - {"type"},
        "audit": set(AuditEvent.model_fields) - {"type"},
    }


@pytest.mark.parametrize("event", [interaction(3), feedback(4), audit(5)], ids=["interaction", "feedback", "audit"])
def test_a_complete_event_takes_the_fast_path_with_the_models_values(
    event: InteractionEvent | FeedbackEvent | AuditEvent,
) -> None:
    raw = event.encode()
    struct, stored = decode_fast(raw)
    assert FAST_TYPES[type(struct)] == event.type
    assert as_dict(struct) == json.loads(raw) == json.loads(stored)


def mutated(**changes: object) -> bytes:
    data = json.loads(GOOD) | changes
    return json.dumps({k: v for k, v in data.items() if v is not DROP}).encode()


DROP = object()
FEEDBACK = {"schema_version": 1, "type": "feedback", "feedback_id": "f", "interaction_id": "i"}


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b"\xff\xfe",
        mutated(prompt_tokens="many"),
        mutated(prompt_tokens=-1),
        mutated(confidence=0),
        mutated(confidence=1.5),
        mutated(arm="control"),
        mutated(interaction_id=""),
        mutated(interaction_id="x" * 65),
        mutated(messages=[{"role": "wizard", "content": "x"}]),
        mutated(messages=[{"role": "user", "content": "x", "extra": 1}]),
        mutated(surprise=1),
        mutated(finish_reason=DROP),
        mutated(type="nonsense"),
        mutated(type=DROP),
        mutated(ts="yesterday"),
        json.dumps({"schema_version": 1, "type": "feedback", "feedback_id": "f", "interaction_id": "i"}).encode(),
        json.dumps(
            {"schema_version": 1, "type": "feedback", "feedback_id": "f", "interaction_id": "i", "rating": 6}
        ).encode(),
    ],
)
def test_refusals_carry_pydantics_exact_reason(raw: bytes) -> None:
    with pytest.raises(InvalidEventError) as expected:
        decode_event(raw)
    with pytest.raises(InvalidEventError) as fast:
        decode_fast(raw)
    assert str(fast.value) == str(expected.value)


@pytest.mark.parametrize("version", [2, 0, None, "1", True, 1.0])
def test_unknown_versions_are_unknown_on_both_paths(version: object) -> None:
    with pytest.raises(UnknownSchemaError, match=f"unknown schema_version {version!r}"):
        decode_fast(mutated(schema_version=version))


def test_an_unknown_version_of_a_valid_shape_is_unknown() -> None:
    with pytest.raises(UnknownSchemaError, match="unknown schema_version 2"):
        decode_fast(mutated(schema_version=2))


def test_lax_input_pydantic_accepts_is_stored_canonically() -> None:
    struct, stored = decode_fast(mutated(prompt_tokens="96", event_id=DROP, schema_version=DROP))
    canonical = json.loads(stored)
    assert (struct.prompt_tokens, canonical["prompt_tokens"], canonical["schema_version"]) == (96, 96, 1)
    assert len(canonical["event_id"]) == 32  # pydantic's default: a fresh id, stored as such
    assert canonical["event_id"] == struct.event_id


def test_timestamps_with_offsets_keep_their_instant() -> None:
    struct, _ = decode_fast(mutated(ts="2026-11-29T17:00:00.25+05:30"))
    assert struct.ts == datetime(2026, 11, 29, 11, 30, 0, 250000, tzinfo=UTC)
    assert struct.ts.utcoffset() == timedelta(hours=5, minutes=30)
    assert decode_event(mutated(ts="2026-11-29T17:00:00.25+05:30")).ts == struct.ts
    assert struct.ts.tzinfo == timezone(timedelta(hours=5, minutes=30))


def test_feedback_without_content_is_refused_by_the_models_own_check() -> None:
    raw = FeedbackEvent(feedback_id="f", interaction_id="i", thumb="up").encode().replace(b'"up"', b"null")
    with pytest.raises(InvalidEventError, match="feedback needs a thumb, a rating, a comment or a correction"):
        decode_fast(raw)


def test_a_lone_surrogate_pydantic_accepts_is_refused_not_crashed() -> None:
    raw = GOOD.replace(b"Lisbon", b"Lis\\ud800bon")
    assert "\ud800" in decode_event(raw).messages[1].content  # pydantic lets it through
    with pytest.raises(InvalidEventError, match=r"^not representable: "):
        decode_fast(raw)


def test_a_key_given_twice_is_stored_as_validated_the_last() -> None:
    twice = GOOD[:-1] + b', "prompt_tokens" : 5}'
    assert decode_event(twice).prompt_tokens == 5
    struct, stored = decode_fast(twice)
    assert (struct.prompt_tokens, json.loads(stored)["prompt_tokens"], stored.count(b'"prompt_tokens"')) == (5, 5, 1)
    poisoned_first = GOOD.replace(b'"prompt_tokens":96', b'"prompt_tokens":"many","prompt_tokens":96')
    assert json.loads(decode_fast(poisoned_first)[1])["prompt_tokens"] == 96


def test_to_fast_matches_decode_fast() -> None:
    event = interaction(11)
    struct, stored = to_fast(event)
    assert stored == event.encode()
    assert as_dict(struct) == as_dict(decode_fast(event.encode())[0])


def test_a_schema_feature_without_translation_fails_loudly() -> None:
    class Checked(BaseModel):
        name: str

        @field_validator("name")
        @classmethod
        def _upper(cls, value: str) -> str:
            return value.upper()

    with pytest.raises(TypeError, match="Checked has field validators"):
        _struct(Checked, {})


def test_a_complete_event_is_stored_as_it_came() -> None:
    for event in (interaction(1), feedback(2), audit(3)):
        raw = event.encode()
        assert decode_fast(raw)[1] is raw


@pytest.mark.parametrize(
    "raw",
    [
        GOOD[:-1] + b',"seed":5}',  # a key twice
        GOOD.replace(b'{"role":"system",', b'{"role":"user","role":"system",'),  # twice inside a message
        GOOD.replace(b'"completion":"', b'"completion":"a \\"quoted\\" word. '),  # quotes inside a string
        GOOD.replace(b'"seed":', b'"se\\u0065d":1,"seed":'),  # the repeat spelled with an escape
    ],
)
def test_raw_that_may_repeat_a_key_is_stored_re_encoded(raw: bytes) -> None:
    struct, stored = decode_fast(raw)
    assert stored is not raw
    assert msgspec.json.decode(stored) == json.loads(msgspec.json.encode(struct))
    assert stored.count(b'"seed"') == 1


def test_audit_details_repeating_a_key_are_re_encoded() -> None:
    raw = audit(1).encode().replace(b'"details":{"to":10}', b'"details":{"to":1,"to":10}')
    struct, stored = decode_fast(raw)
    assert (struct.details, json.loads(stored)["details"], stored is raw) == ({"to": 10}, {"to": 10}, False)
