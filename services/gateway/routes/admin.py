"""``/v1/admin/deployments``: set a challenger, change mode or ramp step, promote, roll back.

Reading the deployment needs the ``models`` permission, a challenger in shadow ``deploy-shadow``
(admins and developers); A/B mode and ramp steps, promotion and rollback need ``deploy-ramp``
(admins). Changes are recorded as made by the key's name and id, and each change's audit event
carries the deployment before and after it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from feedback import deployments
from feedback.access import Permission
from feedback.audit import deployment_snapshot, note_of
from feedback.deployments import DeploymentState
from services.gateway.auth import ModelsUser, RampDeployer, ShadowDeployer, check
from services.gateway.deploying import Change, DeploymentControl
from services.gateway.deps import ControlDep
from services.gateway.protocol import DeploymentView, SetChallenger, SetMode

router = APIRouter(prefix="/v1/admin/deployments", tags=["admin"])


async def _change(request: Request, control: DeploymentControl, change: Change) -> DeploymentView:
    """Apply ``change`` and put the deployment before and after it on the request's audit note."""
    before, note = control.state, note_of(request)
    note.resource, note.details["before"] = before.deployment_id, deployment_snapshot(before)
    after = await control.change(change)  # a refused change is recorded with its state before
    note.resource, note.details["after"] = after.deployment_id, deployment_snapshot(after)
    return view(after)


def view(state: DeploymentState) -> DeploymentView:
    """The state as the API shows it."""
    return DeploymentView(
        **state.model_dump(include={"deployment_id", "revision", "champion", "challenger", "mode", "ramp_step"}),
        ramp=list(state.ramp),
        phase=state.phase,
        challenger_percent=state.challenger_percent,
        shadow_sample_rate=state.shadow_sample_rate,
        updated_by=state.updated_by,
    )


@router.get("")
async def current(_: ModelsUser, control: ControlDep) -> DeploymentView:
    """The deployment this gateway applies now."""
    return view(control.state)


@router.post("/challenger")
async def set_challenger(
    body: SetChallenger, request: Request, who: ShadowDeployer, control: ControlDep
) -> DeploymentView:
    """Deploy a new challenger (a new deployment id); entering at an A/B step needs ``deploy-ramp``."""
    if body.mode == "ab":
        check(who, Permission.DEPLOY_RAMP)
    return await _change(
        request,
        control,
        lambda s: deployments.set_challenger(
            s, body.model_version, by=who.label, mode=body.mode, sample_rate=body.shadow_sample_rate
        ),
    )


@router.post("/mode")
async def set_mode(body: SetMode, request: Request, who: RampDeployer, control: ControlDep) -> DeploymentView:
    """Switch between shadow and A/B, or move up the ramp."""
    return await _change(
        request,
        control,
        lambda s: deployments.set_mode(s, body.mode, by=who.label, step=body.step, sample_rate=body.shadow_sample_rate),
    )


@router.post("/promote")
async def promote(request: Request, who: RampDeployer, control: ControlDep) -> DeploymentView:
    """Make the challenger the champion."""
    return await _change(request, control, lambda s: deployments.promote(s, by=who.label))


@router.post("/rollback")
async def roll_back(request: Request, who: RampDeployer, control: ControlDep) -> DeploymentView:
    """Remove the challenger."""
    return await _change(request, control, lambda s: deployments.roll_back(s, by=who.label))
