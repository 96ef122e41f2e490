"""Access to the gateway's routes: one dependency per permission (:mod:`feedback.access`).

Every route declares what it needs, ``Depends(require(Permission.CHAT))`` (the principal, also on
``request.state.principal``) or ``Depends(public)``. Without a valid key the answer is a 401 with
``WWW-Authenticate: Bearer``; a valid key whose role lacks the permission gets a 403; both in
OpenAI's error shape.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from feedback.access import Permission, Principal
from feedback.errors import AccessError, NotPermitted
from services.gateway.errors import ApiError
from services.http_access import CHALLENGE, Requirement, requirement


def _refuse(status: int, why: AccessError) -> ApiError:
    if status == 401:
        return ApiError(401, str(why), kind="authentication_error", headers=CHALLENGE)
    return ApiError(403, str(why), kind="permission_error")


def require(permission: Permission) -> Requirement:
    """The dependency of a route that needs ``permission``."""
    return requirement(permission, _refuse)


def check(principal: Principal, permission: Permission) -> Principal:
    """``principal``, or a 403 when a request asks for more than its route's permission (a forced arm)."""
    try:
        return principal.require(permission)
    except NotPermitted as exc:
        raise _refuse(403, exc) from exc


ChatUser = Annotated[Principal, Depends(require(Permission.CHAT))]
FeedbackUser = Annotated[Principal, Depends(require(Permission.FEEDBACK))]
ModelsUser = Annotated[Principal, Depends(require(Permission.MODELS))]
ShadowDeployer = Annotated[Principal, Depends(require(Permission.DEPLOY_SHADOW))]
RampDeployer = Annotated[Principal, Depends(require(Permission.DEPLOY_RAMP))]
