"""The registry's HTTP API: adapter versions by hash, for gateways on other machines (``models``).

A gateway with ``model.registry_url`` set asks for a version its own registry lacks: the manifest
first, then each content file by its fixed name (:data:`feedback.registry.CONTENT_FILES`). Files are
served as stored; the gateway verifies the version's hash before it installs it
(:mod:`feedback.registry_remote`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from feedback.errors import RegistryError
from feedback.registry import CONTENT_FILES, AdapterRegistry
from feedback.registry_remote import VersionManifest, version_manifest
from services.worker.auth import ModelsReader

router = APIRouter()

Version = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="an adapter version: 64 hex digits")]


def _registry(request: Request) -> AdapterRegistry:
    return AdapterRegistry(request.app.state.settings.model.registry_dir)


@router.get("/v1/registry/{version}")
def version_files(request: Request, version: Version, _: ModelsReader) -> VersionManifest:
    """The content files of ``version``: name, size and SHA-256 of each."""
    try:
        return version_manifest(_registry(request), version)
    except RegistryError as exc:
        raise HTTPException(404, f"adapter version {version} is not in the registry") from exc


@router.get("/v1/registry/{version}/{name}")
def version_file(request: Request, version: Version, name: str, _: ModelsReader) -> FileResponse:
    """One content file of ``version``, by its registry name (``adapter_model.safetensors`` ...)."""
    if name not in CONTENT_FILES:
        raise HTTPException(404, f"an adapter version has no file {name!r}; its files are {', '.join(CONTENT_FILES)}")
    path = _registry(request).root / version / name
    if not path.is_file():
        raise HTTPException(404, f"adapter version {version} is not in the registry")
    return FileResponse(path, media_type="application/octet-stream")
