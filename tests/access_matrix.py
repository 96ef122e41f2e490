"""The permission matrix tests' shared part: which permission each route of an app declares."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from feedback.access import PERMISSIONS, Permission
from services.http_access import public

PUBLIC = "public"
# FastAPI's own documentation routes: open on purpose (the OpenAPI schema describes the API, no data)
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
PRINCIPALS = ("admin", "developer", "analyst", "user", "no key", "revoked key", "malformed header", "not a key")


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    """Every dependency of ``dependant``, theirs included."""
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependencies(dependency)


def _declared(dependant: Dependant) -> list[Permission | str]:
    found: list[Permission | str] = []
    for dependency in _dependencies(dependant):
        if dependency.call is public:
            found.append(PUBLIC)
        elif hasattr(dependency.call, "permission"):
            found.append(dependency.call.permission)
    return found


def declared_permissions(app: FastAPI) -> dict[tuple[str, str], Permission | str]:
    """(method, path) -> the one permission (or ``public``) each API route declares; fails on none or several."""
    routes: dict[tuple[str, str], Permission | str] = {}
    for route in iter_route_contexts(app.routes):  # routes of included routers with the router's dependencies
        if not isinstance(route.original_route, APIRoute):
            assert route.path in DOCS, f"{route.path} is not an API route nor documentation"
            continue
        declared = set(_declared(route.dependant))
        assert len(declared) == 1, f"{sorted(route.methods)} {route.path} declares {declared or 'no permission'}"
        only = next(iter(declared))
        for method in route.methods or ():
            routes[(method, route.path)] = only
    return routes


def expected_status(permission: Permission | str, principal: str, allowed: int) -> int:
    """The status a request of ``principal`` gets on a route needing ``permission`` (``allowed`` when it may)."""
    if permission == PUBLIC:
        return allowed
    if principal not in PERMISSIONS or principal == "decision-engine":
        return 401  # no key, a revoked one, a malformed header or token
    return allowed if permission in PERMISSIONS[principal] else 403


def plain_dependencies(app: FastAPI) -> list[str]:
    """``path: dependency`` for each dependency of an API route that is a plain function (FastAPI runs those in
    its thread pool, a hand-off to a thread and back per request)."""
    return [
        f"{route.path}: {getattr(dependency.call, '__qualname__', dependency.call)}"
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute)
        for dependency in _dependencies(route.dependant)
        if dependency.call is not None and not inspect.iscoroutinefunction(dependency.call)
    ]
