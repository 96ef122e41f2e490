"""Roles, permissions and principals: who may do what.

Every HTTP route and every CLI command that acts on the service declares one :class:`Permission`;
:data:`PERMISSIONS` is the one table that says which role holds it. A request's principal comes
from its API key (:mod:`feedback.apikeys`); the ``decision-engine`` principal is internal (the
worker's decision engine in auto mode), holds no key and cannot be authenticated over HTTP.

    role         may
    admin        everything: deployments (shadow, ramp, promote, roll back), refresh, keys,
                 raw text, the audit trail, reports and analytics, chat and feedback
    developer    models and the refresh ledger, deploy a challenger in shadow, force an arm,
                 reports and redacted analytics, chat and feedback (to try models)
    analyst      read-only: reports, redacted analytics and the dashboard's views; no chat
    user         chat and feedback
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args

from feedback.errors import NotPermitted

Role = Literal["admin", "developer", "analyst", "user"]
ROLES: tuple[Role, ...] = get_args(Role)
DECISION_ENGINE_ROLE = "decision-engine"


class Permission(StrEnum):
    """One thing a principal may do; routes and commands each declare the one they need."""

    CHAT = "chat"  # chat completions and the model list
    FEEDBACK = "feedback"  # feedback on an interaction
    FORCE_ARM = "force-arm"  # choose the champion or challenger arm of a request (testing)
    MODELS = "models"  # read deployments, the model registry and the refresh ledger
    DEPLOY_SHADOW = "deploy-shadow"  # set a challenger in shadow mode
    DEPLOY_RAMP = "deploy-ramp"  # A/B mode and ramp steps, promote, roll back
    REFRESH = "refresh"  # start a refresh (or force one that already ran)
    KEYS = "keys"  # create, list and revoke API keys
    REPORTS = "reports"  # A/B reports and summaries
    ANALYTICS = "analytics"  # analyst SQL over the redacted lake
    RAW_TEXT = "raw-text"  # unredacted prompts and answers (raw views, recent interactions)
    RAW_AUDIT = "raw-audit"  # unredacted audit records
    AUDIT = "audit"  # read the audit trail (who did what, when, and why)
    OPERATIONS = "operations"  # the sink's lag and counters
    DASHBOARD = "dashboard"  # the dashboard's read-only views: deployment, experiments, models, refreshes, feedback


_READ = frozenset({Permission.REPORTS, Permission.ANALYTICS, Permission.DASHBOARD})
_SERVE = frozenset({Permission.CHAT, Permission.FEEDBACK})

PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "developer": _READ
    | _SERVE
    | {Permission.FORCE_ARM, Permission.MODELS, Permission.DEPLOY_SHADOW, Permission.OPERATIONS},
    "analyst": _READ,
    "user": _SERVE,
    # acts in auto mode: advances, promotes and rolls back, deploys the refresh's candidate
    DECISION_ENGINE_ROLE: frozenset({Permission.MODELS, Permission.DEPLOY_SHADOW, Permission.DEPLOY_RAMP}),
}


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the key's id and name and its role."""

    key_id: str
    name: str
    role: str

    @property
    def label(self) -> str:
        """How records name this principal (``updated_by``, registry history): ``name (key_id)``."""
        return self.name if self.key_id == self.name else f"{self.name} ({self.key_id})"

    def can(self, permission: Permission) -> bool:
        """Whether this principal's role holds ``permission``."""
        return permission in PERMISSIONS.get(self.role, frozenset())

    def require(self, permission: Permission) -> Principal:
        """This principal, or NotPermitted naming the role and the permission."""
        if not self.can(permission):
            raise NotPermitted(f"the role {self.role!r} may not {permission.value}; {roles_with(permission)} may")
        return self


DECISION_ENGINE = Principal(key_id=DECISION_ENGINE_ROLE, name=DECISION_ENGINE_ROLE, role=DECISION_ENGINE_ROLE)
# with security.auth = "off" (development only) every request acts as this principal
AUTH_OFF = Principal(key_id="auth-off", name="auth-off", role="admin")


def roles_with(permission: Permission) -> str:
    """The key roles that hold ``permission``, for messages: ``admin or developer``."""
    return " or ".join(role for role in ROLES if permission in PERMISSIONS[role])
