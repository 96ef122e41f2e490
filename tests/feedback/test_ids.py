import time
import uuid

from feedback.ids import new_id, uuid7


def test_uuid7_has_version_and_variant() -> None:
    value = uuid7()
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_ids_are_time_ordered_across_milliseconds() -> None:
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    assert first < second
    assert len(first) == 32


def test_timestamp_is_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    millis = uuid7().int >> 80
    after = time.time_ns() // 1_000_000
    assert before <= millis <= after
