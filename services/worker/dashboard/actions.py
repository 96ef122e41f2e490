"""The dashboard's deployment actions: promote, roll back, change the ramp step, through the gateway.

``flywheel deploy`` and ``flywheel models promote|rollback`` change the deployment with
``POST /v1/admin/deployments/...`` on a gateway, with the admin's key. The dashboard does exactly
that: the worker forwards the admin's own ``Authorization`` header to the same endpoint, so the
gateway checks the same key, applies the change through the deployments topic and records the same
``deployment.*`` audit event (actor, before and after) as for the CLI. The worker records its own
event for the request it received (``dashboard.deployment.*``) besides. The worker does not publish
the change itself: the gateway also checks that the new state's models load before publishing it.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from feedback.settings import Settings

Action = Literal["promote", "rollback", "mode"]
TIMEOUT_S = 120.0  # the gateway waits for its own replicas to apply the change (and may load a model)


class RampStep(BaseModel):
    """``POST /v1/dashboard/deployments/mode``: move to an A/B ramp step (the gateway's ``SetMode``)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["shadow", "ab"] = "ab"
    step: int = Field(0, ge=0)  # index into the ramp


class GatewayUnreachable(Exception):
    """The gateway did not answer; the message names it."""


def gateway_url(settings: Settings) -> str:
    """The gateway's base URL: ``worker.dashboard_gateway_url``, else the gateway settings (as the CLI)."""
    url = settings.worker.dashboard_gateway_url or f"http://{settings.gateway.host}:{settings.gateway.port}"
    return url.rstrip("/")


async def forward(
    settings: Settings, action: Action, authorization: str, body: dict[str, Any] | None
) -> tuple[int, dict[str, Any]]:
    """``POST /v1/admin/deployments/{action}`` on the gateway with the caller's key: its status and JSON."""
    url = f"{gateway_url(settings)}/v1/admin/deployments/{action}"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            response = await client.post(url, json=body, headers={"Authorization": authorization})
    except httpx.HTTPError as exc:
        raise GatewayUnreachable(f"the gateway at {gateway_url(settings)} is not reachable: {exc}") from exc
    try:
        data = response.json()
    except ValueError:
        data = {"error": {"message": response.text[:500]}}
    return response.status_code, data if isinstance(data, dict) else {"value": data}


def refusal_message(data: dict[str, Any]) -> str:
    """The gateway's message in its OpenAI-shaped error (or FastAPI's ``detail``)."""
    error = data.get("error")
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    return str(data.get("detail", data))
