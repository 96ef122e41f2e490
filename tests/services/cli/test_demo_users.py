"""The demo's A/B step: its users fill both arms whatever the deployment id (pure unit test, no services)."""

from __future__ import annotations

import pytest

from feedback.assignment import assign
from services.cli.demo import SHORT, ab_users, traffic_users

USUAL = ["expert-0", "expert-1", "user-0", "user-1", "user-2", "user-3"]


def test_the_usual_users_can_all_land_in_one_arm() -> None:
    """Why the A/B step may add users: the six of --short all fall in the champion arm of this deployment."""
    assert traffic_users(SHORT.users, ["expert-0", "expert-1"]) == USUAL
    assert {assign("deployment-8", user, 50) for user in USUAL} == {"champion"}


def test_where_both_arms_have_usual_users_they_are_the_test_s_users() -> None:
    """They asked before the test, so CUPED has their pre-period."""
    assert [assign("deployment-3", user, 50) for user in USUAL].count("challenger") == 4
    assert ab_users("deployment-3", USUAL, 50) == USUAL


def test_where_they_all_land_in_one_arm_new_users_fill_the_other() -> None:
    users = ab_users("deployment-8", USUAL, 50)
    assert users == [*USUAL, "ab-user-0", "ab-user-2", "ab-user-5"]
    assert [assign("deployment-8", user, 50) for user in users[6:]] == ["challenger"] * 3


def test_a_small_share_with_every_user_a_champion_gets_challengers() -> None:
    users = ab_users("deployment-8", USUAL, 5)
    assert {assign("deployment-8", user, 5) for user in USUAL} == {"champion"}
    assert [assign("deployment-8", user, 5) for user in users[6:]] == ["challenger"] * 3


@pytest.mark.parametrize("percent", [0, 100])
def test_a_share_that_leaves_an_arm_empty_is_refused(percent: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100 percent"):
        ab_users("deployment-8", USUAL, percent)
