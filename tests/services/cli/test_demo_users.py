"""The demo's A/B phase: its users fill both arms whatever the deployment id (pure unit test, no services)."""

from __future__ import annotations

import pytest

from feedback.assignment import assign
from services.cli.demo import SHORT, ab_users, traffic_users


def test_the_usual_users_can_all_land_in_one_arm() -> None:
    """Why the A/B phase picks its own users: the six of --short all fall in the champion arm of this deployment."""
    users = traffic_users(SHORT.users, ["expert-0", "expert-1"])
    assert users == ["expert-0", "expert-1", "user-0", "user-1", "user-2", "user-3"]
    assert {assign("deployment-8", user, 50) for user in users} == {"champion"}


def test_the_ab_users_alternate_between_the_arms() -> None:
    users = ab_users("deployment-8", 6, 50)
    assert users == ["ab-user-1", "ab-user-0", "ab-user-3", "ab-user-2", "ab-user-4", "ab-user-5"]
    arms = [assign("deployment-8", user, 50) for user in users]
    assert arms == ["champion", "challenger"] * 3


def test_an_odd_count_and_a_small_share_still_give_each_arm_users() -> None:
    users = ab_users("deployment-21", 5, 10)
    assert users == ["ab-user-0", "ab-user-19", "ab-user-1", "ab-user-34", "ab-user-2"]
    arms = [assign("deployment-21", user, 10) for user in users]
    assert arms == ["champion", "challenger", "champion", "challenger", "champion"]


@pytest.mark.parametrize("percent", [0, 100])
def test_a_share_that_leaves_an_arm_empty_is_refused(percent: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100 percent"):
        ab_users("deployment-8", 6, percent)
