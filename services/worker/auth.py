"""Access to the worker's routes: one dependency per permission (:mod:`feedback.access`).

``Authorization: Bearer <API key>``; without a valid key a 401 with ``WWW-Authenticate: Bearer``,
a key whose role lacks the permission a 403, each with FastAPI's ``{"detail": message}``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException

from feedback.access import Permission, Principal
from feedback.errors import AccessError
from services.http_access import CHALLENGE, Requirement, requirement


def _refuse(status: int, why: AccessError) -> HTTPException:
    return HTTPException(status, str(why), headers=CHALLENGE if status == 401 else None)


def require(permission: Permission) -> Requirement:
    """The dependency of a route that needs ``permission``."""
    return requirement(permission, _refuse)


Reader = Annotated[Principal, Depends(require(Permission.REPORTS))]
Analyst = Annotated[Principal, Depends(require(Permission.ANALYTICS))]
RawReader = Annotated[Principal, Depends(require(Permission.RAW_TEXT))]
Operator = Annotated[Principal, Depends(require(Permission.OPERATIONS))]
ModelsReader = Annotated[Principal, Depends(require(Permission.MODELS))]
RefreshStarter = Annotated[Principal, Depends(require(Permission.REFRESH))]
Auditor = Annotated[Principal, Depends(require(Permission.AUDIT))]
