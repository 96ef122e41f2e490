"""Sticky assignment: pinned buckets (sha256 computed independently) and monotone ramps."""

from __future__ import annotations

import pytest

from feedback.assignment import assign, bucket


@pytest.mark.parametrize(
    ("salt", "unit", "expected"),
    [
        # int(sha256(f"{salt}:{unit}").hexdigest()[:8], 16) % 10000, from hashlib in a separate shell
        ("exp-1", "alice", 4197),  # aa202855
        ("exp-1", "bob", 4603),  # 08e1a13b
        ("d-42", "session-7", 9545),  # 4d5e82f9
        ("", "", 1014),  # e7ac0786
    ],
)
def test_bucket_matches_pinned_vectors(salt: str, unit: str, expected: int) -> None:
    assert bucket(salt, unit) == expected


def test_challenger_iff_bucket_below_percent_times_100() -> None:
    assert assign("exp-1", "alice", 42) == "challenger"  # 4197 < 4200
    assert assign("exp-1", "alice", 41.97) == "champion"  # 4197 is not < 4197
    assert assign("exp-1", "alice", 0) == "champion"
    assert assign("exp-1", "alice", 100) == "challenger"


def test_raising_the_percentage_keeps_every_challenger() -> None:
    units = [f"user-{i}" for i in range(2000)]
    arms = {p: {u for u in units if assign("salt", u, p) == "challenger"} for p in (5, 10, 25, 50)}
    assert arms[5] <= arms[10] <= arms[25] <= arms[50]
    assert len(arms[5]) == sum(bucket("salt", u) < 500 for u in units)


def test_salt_changes_the_split() -> None:
    assert bucket("a", "alice") != bucket("b", "alice")


def test_percent_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="percent must be in"):
        assign("s", "u", 101)
