"""The refresh's HTTP API: start one now or dry-run it (``refresh``: admins), and the ledger (``models``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from feedback.audit import note_of
from services.worker.auth import ModelsReader, RefreshStarter
from services.worker.refresh import RefreshBusy, Refresher, RefreshRefused

router = APIRouter()


class RefreshRequest(BaseModel):
    """``POST /v1/admin/refresh``: run today's refresh now, force a date that already ran, or only show it."""

    model_config = ConfigDict(extra="forbid")

    dry_run: bool = False  # select and curate into a temporary directory; claim, train and mark nothing
    force: bool = False  # run today's refresh again although it already ran (recorded as forced by the admin)


@router.post("/v1/admin/refresh", response_model=None)
def start_refresh(request: Request, body: RefreshRequest, who: RefreshStarter) -> dict[str, Any] | JSONResponse:
    """Start today's refresh (202 with its run id; follow it at ``GET /v1/refreshes/{date}``) or dry-run it (200)."""
    note = note_of(request)
    note.details["dry_run"], note.details["force"] = body.dry_run, body.force
    refresher: Refresher = request.app.state.refresher
    try:
        if body.dry_run:
            return refresher.dry_run()
        run = refresher.start(refresher.today(), forced_by=who.label if body.force else None)
    except (RefreshBusy, RefreshRefused) as exc:
        raise HTTPException(409, str(exc)) from exc
    note.resource = run.run
    return JSONResponse({"key": run.key, "run": run.run, "stage": run.stage, "forced_by": run.forced_by}, 202)


@router.get("/v1/refreshes")
def list_refreshes(request: Request, _: ModelsReader) -> list[dict[str, Any]]:
    """Every refresh the ledger records, by date, with its outcome."""
    refresher: Refresher = request.app.state.refresher
    return refresher.registry.refreshes()


@router.get("/v1/refreshes/{key}")
def refresh_status(request: Request, key: str, _: ModelsReader) -> dict[str, Any]:
    """One refresh's record; ``running`` names its current step while this worker runs it."""
    refresher: Refresher = request.app.state.refresher
    try:
        return refresher.status(key)
    except RefreshRefused as exc:
        raise HTTPException(404, str(exc)) from exc
