"""Which arm answers a request, and whether a shadow copy goes to the challenger."""

from __future__ import annotations

from dataclasses import dataclass

from feedback.assignment import assign
from feedback.deployments import DeploymentState
from feedback.events import Arm


@dataclass(frozen=True)
class Route:
    """The served arm and model version, the shadow model version if any, and the state they came from."""

    arm: Arm
    model_version: str
    shadow_version: str | None
    state: DeploymentState


def choose_route(state: DeploymentState, unit: str, *, forced: Arm | None, draw: float) -> Route:
    """Route one request; ``draw`` is a uniform number in [0, 1) deciding shadow sampling.

    In A/B mode the unit's sticky bucket decides (salted by the deployment id, so a unit keeps its
    arm through every ramp step); in shadow mode the champion serves and a sampled share of
    requests is copied to the challenger. ``forced`` (admins only) overrides the assignment.
    """
    if state.challenger is None:
        return Route("champion", state.champion, None, state)
    arm: Arm = forced or (
        assign(state.deployment_id, unit, state.challenger_percent) if state.mode == "ab" else "champion"
    )
    served = state.challenger if arm == "challenger" else state.champion
    sampled = state.mode == "shadow" and arm == "champion" and draw < state.shadow_sample_rate
    return Route(arm, served, state.challenger if sampled else None, state)
