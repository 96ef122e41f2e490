"""The interim admin check: a static bearer token from ``security.admin_token``."""

from __future__ import annotations

import hmac

from feedback.settings import Settings
from services.gateway.errors import ADMIN_TOKEN_MISSING, ADMIN_TOKEN_WRONG, ApiError


def require_admin(authorization: str | None, settings: Settings) -> str:
    """Return the principal (``admin``) or raise 401 (no bearer token) / 403 (a wrong one)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, ADMIN_TOKEN_MISSING, kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.encode(), settings.security.admin_token.encode()):
        raise ApiError(403, ADMIN_TOKEN_WRONG, kind="permission_error")
    return "admin"
