"""The worker's admin check: the interim static admin token in the ``X-Admin-Token`` header."""

from __future__ import annotations

import hmac

from fastapi import HTTPException

from feedback.settings import Settings


def is_admin(settings: Settings, token: str | None) -> bool:
    """False without a token, True with the right one; a wrong token is a 401, never a silent downgrade."""
    if token is None:
        return False
    if not hmac.compare_digest(token.encode(), settings.security.admin_token.encode()):
        raise HTTPException(401, "the admin token is not valid")
    return True
