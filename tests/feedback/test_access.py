"""The permission table and principals (pure unit tests)."""

from __future__ import annotations

import pytest

from feedback.access import DECISION_ENGINE, PERMISSIONS, ROLES, Permission, Principal, roles_with
from feedback.errors import NotPermitted


def holders(permission: Permission) -> set[str]:
    return {role for role, granted in PERMISSIONS.items() if permission in granted}


def test_the_table_gives_each_permission_to_exactly_these_roles() -> None:
    assert ROLES == ("admin", "developer", "analyst", "user")
    assert {p: holders(p) for p in Permission} == {
        Permission.CHAT: {"admin", "developer", "user"},
        Permission.FEEDBACK: {"admin", "developer", "user"},
        Permission.FORCE_ARM: {"admin", "developer"},
        Permission.MODELS: {"admin", "developer", "decision-engine"},
        Permission.DEPLOY_SHADOW: {"admin", "developer", "decision-engine"},
        Permission.DEPLOY_RAMP: {"admin", "decision-engine"},
        Permission.REFRESH: {"admin"},
        Permission.KEYS: {"admin"},
        Permission.REPORTS: {"admin", "developer", "analyst"},
        Permission.ANALYTICS: {"admin", "developer", "analyst"},
        Permission.RAW_TEXT: {"admin"},
        Permission.RAW_AUDIT: {"admin"},
        Permission.AUDIT: {"admin"},
        Permission.OPERATIONS: {"admin", "developer"},
        Permission.DASHBOARD: {"admin", "developer", "analyst"},
    }


def test_require_names_the_role_and_who_may() -> None:
    analyst = Principal(key_id="0123456789abcdef", name="ana", role="analyst")
    assert analyst.require(Permission.REPORTS) is analyst
    with pytest.raises(NotPermitted) as refused:
        analyst.require(Permission.RAW_TEXT)
    assert str(refused.value) == "the role 'analyst' may not raw-text; admin may"
    assert roles_with(Permission.CHAT) == "admin or developer or user"


def test_the_decision_engine_has_no_key_role_and_an_unknown_role_may_nothing() -> None:
    assert DECISION_ENGINE.role not in ROLES
    assert DECISION_ENGINE.can(Permission.DEPLOY_RAMP)
    assert not DECISION_ENGINE.can(Permission.KEYS)
    assert not Principal(key_id="x", name="x", role="root").can(Permission.CHAT)
