"""The dashboard's routes: the page, its views' JSON and the deployment actions.

The page and its static files are public (no data in them); the page asks for an API key and sends
it with every request. Views need ``dashboard`` (admins, developers, analysts), the deployment
actions ``deploy-ramp`` (admins), the refresh the existing ``POST /v1/admin/refresh`` (admins).
A view not computed yet answers ``{"status": "computing"}`` and the page asks again.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from evaluation.errors import UnknownExperimentError
from feedback.access import Permission, Principal
from feedback.audit import note_of
from feedback.registry import AdapterRegistry
from services.http_access import public
from services.worker.auth import require
from services.worker.dashboard.actions import Action, GatewayUnreachable, RampStep, forward, refusal_message
from services.worker.dashboard.cache import Cached
from services.worker.dashboard.overview import abilities, deployment_view, lag_view, refresh_view, verdict_view
from services.worker.dashboard.records import FeedbackKind, feedback_view, models_view, refreshes_view
from services.worker.dashboard.series import experiments
from services.worker.dashboard.views import LIVE_TTL_S, SERIES_TTL_S, DashboardViews, search
from services.worker.status import partition_lags

router = APIRouter()

STATIC = Path(__file__).parent / "static"
SCRIPT, STYLE = "text/javascript", "text/css"
ASSETS = {"app.js": SCRIPT, "pages.js": SCRIPT, "render.js": SCRIPT, "charts.js": SCRIPT, "style.css": STYLE}
PAGE_PATHS = ("/dashboard", *(f"/dashboard/static/{name}" for name in ASSETS))  # never audited: no data
Viewer = Annotated[Principal, Depends(require(Permission.DASHBOARD))]
RampChanger = Annotated[Principal, Depends(require(Permission.DEPLOY_RAMP))]
Experiment = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[\w.:-]+$")]
NO_STORE = {"Cache-Control": "no-store"}


def _views(request: Request) -> DashboardViews:
    views: DashboardViews = request.app.state.dashboard
    return views


@router.get("/dashboard", dependencies=[Depends(public)], include_in_schema=False)
def page() -> FileResponse:
    """The dashboard page (it asks for an API key, then reads the views below)."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_STORE)


@router.get("/dashboard/static/{name}", dependencies=[Depends(public)], include_in_schema=False)
def asset(name: str) -> FileResponse:
    """One of the page's scripts or its style sheet, served from the package (no CDN)."""
    if name not in ASSETS:
        raise HTTPException(404, f"no dashboard asset {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=NO_STORE)


@router.get("/v1/dashboard/overview")
def overview(request: Request, who: Viewer) -> dict[str, Any]:
    """Deployment, verdict with its reasons, live rates per arm, consumer lag, last and next refresh."""
    state, views = request.app.state, _views(request)
    deployment = state.deployments.current()
    lag = functools.partial(partition_lags, state.end_offsets, state.sink.topics, state.store)
    lags, live = views.cache.get(("lag",), lag, LIVE_TTL_S), views.live()
    listed = views.cache.get(("experiments",), lambda: experiments(state.store), SERIES_TTL_S)
    return {
        "you": abilities(who),
        "deployment": deployment_view(deployment),
        "experiment": deployment.deployment_id,
        "verdict": verdict_view(views.report(deployment.deployment_id)),
        "live": _value(live),
        "lag": lag_view(_value(lags)),
        "refresh": refresh_view(state.refresher.registry, state.refresher.current, state.settings.scheduler),
        "experiments": _value(listed) or [],
    }


def _value(cached: Cached | None) -> Any:
    return None if cached is None or cached.error is not None else cached.value


def _ready(cached: Cached | None) -> dict[str, Any] | None:
    """None when ``cached`` holds a report; else what to answer (computing, or a 404 for an unknown experiment)."""
    if cached is None:
        return {"status": "computing"}
    if isinstance(cached.error, UnknownExperimentError):
        raise HTTPException(404, str(cached.error))
    if cached.error is not None:
        return {"status": "unavailable", "reason": str(cached.error), "age_s": cached.age_s}
    return None


@router.get("/v1/dashboard/experiments/{experiment}")
def experiment_view(request: Request, experiment: Experiment, _: Viewer) -> dict[str, Any]:
    """The experiment's report (the report API's numbers), its traffic split over time, its age."""
    views = _views(request)
    report, series = views.report(experiment), views.series(experiment)
    waiting = _ready(report)
    if waiting is not None or report is None:
        return waiting or {"status": "computing"}
    return {"status": "ready", "age_s": report.age_s, "report": report.value, "series": _value(series)}


@router.get("/v1/dashboard/experiments/{experiment}/shadow")
def shadow_view(
    request: Request,
    experiment: Experiment,
    _: Viewer,
    q: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> dict[str, Any]:
    """Shadow agreement and similarity (overall and over time) and the least similar pairs, redacted."""
    views = _views(request)
    report, series, pairs = views.report(experiment), views.series(experiment), views.disagreements(experiment)
    waiting = _ready(report)
    if waiting is not None or report is None:
        return waiting or {"status": "computing"}
    return {
        "status": "ready",
        "age_s": report.age_s,
        "shadow": report.value["shadow"],
        "series": _value(series),
        "disagreements": None if _value(pairs) is None else search(_value(pairs), q, limit),
    }


@router.get("/v1/dashboard/models")
def models(request: Request, _: Viewer) -> dict[str, Any]:
    """The registry as a lineage graph, with each version's dataset manifest, training, gate and state."""
    deployment = request.app.state.deployments.current()
    registry = AdapterRegistry(request.app.state.settings.model.registry_dir)
    return models_view(registry, deployment.champion, deployment.challenger)


@router.get("/v1/dashboard/refreshes")
def refreshes(request: Request, _: Viewer) -> dict[str, Any]:
    """Each refresh's selection and curation counts, training summary and gate result, newest first."""
    refresher = request.app.state.refresher
    status = refresh_view(refresher.registry, refresher.current, request.app.state.settings.scheduler)
    return {"runs": refreshes_view(refresher.registry), "running": status["running"], "next": status["next"]}


@router.get("/v1/dashboard/feedback")
def feedback(
    request: Request,
    _: Viewer,
    kind: FeedbackKind = "any",
    arm: Annotated[str | None, Query(pattern="^(champion|challenger)$")] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    """Recent feedback and corrections, newest first, filtered, text PII-redacted."""
    return feedback_view(request.app.state.store, kind, arm, q, limit)


@router.post("/v1/dashboard/deployments/{action}")
async def deployment_action(
    request: Request, action: Action, _: RampChanger, body: RampStep | None = None
) -> dict[str, Any]:
    """Promote, roll back or change the ramp step through the gateway's admin API, with the caller's key."""
    note = note_of(request)
    note.details["action"] = action
    payload = body.model_dump() if action == "mode" and body is not None else None
    if action == "mode" and payload is None:
        raise HTTPException(400, 'changing the ramp step needs a body: {"mode": "ab", "step": N}')
    key = request.headers.get("authorization", "")
    try:
        status, data = await forward(request.app.state.settings, action, key, payload)
    except GatewayUnreachable as exc:
        raise HTTPException(503, str(exc)) from exc
    note.details["gateway_status"] = status
    if status != 200:  # the gateway's refusal, in this API's shape
        raise HTTPException(status, f"the gateway refused: {refusal_message(data)}")
    return data
