"""The quote count of a decoded struct equals that of its canonical JSON, whatever is null."""

import msgspec
import pytest
from pipeline_events import audit, feedback, interaction

from feedback.codec import decode_fast
from feedback.events import AuditEvent, FeedbackEvent, InteractionEvent
from feedback.quotes import struct_counter


class OneOptional(msgspec.Struct, tag_field="type", tag="one"):
    name: str
    note: str | None
    size: int | None


def counted(struct: msgspec.Struct) -> int:
    fixed, varying = struct_counter(type(struct))
    return fixed + (varying(struct) if varying else 0)


@pytest.mark.parametrize(
    "event",
    [
        interaction(1),
        interaction(2).model_copy(update={"finish_reason": None, "error": "boom", "ttft_ms": None}),
        feedback(3),
        FeedbackEvent(feedback_id="f", interaction_id="i", user_id="u", thumb="down", correction="better"),
        audit(4),
        AuditEvent(actor="a", action="b", details={"nested": {"list": ["x", 1, None, {"k": "v"}]}, "n": 2}),
    ],
)
def test_events_count_as_their_canonical_json(event: InteractionEvent | FeedbackEvent | AuditEvent) -> None:
    struct, _ = decode_fast(event.encode())
    assert counted(struct) == msgspec.json.encode(struct).count(b'"') == event.encode().count(b'"')


@pytest.mark.parametrize("note", [None, "set"])
def test_a_single_optional_string_is_counted(note: str | None) -> None:
    value = OneOptional(name="n", note=note, size=None)
    assert counted(value) == msgspec.json.encode(value).count(b'"') == (14 if note else 12)
