"""What the worker does by itself, as audit events.

A scheduled refresh's start (principal ``scheduler``), each refresh's decision with the gate's
reasons and every deployment the worker publishes with its before and after (principal
``decision-engine``), and each retention run with what it removed (principal ``retention``).
"""

from __future__ import annotations

from typing import Any

from pydantic import JsonValue

from feedback.audit import DECISION_ENGINE, AuditTrail, Outcome, deployment_action, deployment_snapshot
from feedback.deployments import DeploymentState
from feedback.events import AuditEvent
from feedback.lake import PurgeResult

SCHEDULER, RETENTION = "scheduler", "retention"  # principals of the worker's scheduled work


def refresh_started(run: str, refused: str | None = None) -> AuditEvent:
    """A scheduled refresh starting, or refused (its date already ran, or one is running)."""
    outcome: Outcome = "allowed" if refused is None else "denied"
    return AuditEvent(
        actor=SCHEDULER,
        action="refresh.start",
        resource=run,
        outcome=outcome,
        reason=refused,
        details={"scheduled": True},
    )


def refresh_decided(outcome: dict[str, Any]) -> AuditEvent:
    """A refresh's end as the decision engine's: the gate's verdict and what became of the candidate."""
    gate = outcome.get("gate") or {}
    details: dict[str, JsonValue] = {
        key: outcome.get(key) for key in ("key", "status", "version", "model_version", "forced_by")
    }
    details["gate"] = {"passed": gate.get("passed"), "reasons": gate.get("reasons")} if gate else None
    return AuditEvent(
        actor=DECISION_ENGINE,
        action="refresh.decision",
        resource=outcome.get("run"),
        outcome="error" if outcome.get("status") == "failed" else "allowed",
        reason=outcome.get("message"),
        details=details,
    )


def deployment_published(before: DeploymentState, after: DeploymentState) -> AuditEvent:
    """A deployment change the worker published by itself (a refresh's candidate as the shadow challenger)."""
    return AuditEvent(
        actor=DECISION_ENGINE,
        action=deployment_action(before, after),
        resource=after.deployment_id,
        reason=f"an automatic change by {after.updated_by}",
        details={"before": deployment_snapshot(before), "after": deployment_snapshot(after)},
    )


def purged(result: PurgeResult, keep_days: int, audit_keep_days: int) -> AuditEvent:
    """One retention run: the cutoff per table, the days removed from the lake, the rows deleted."""
    return AuditEvent(
        actor=RETENTION,
        action="retention.purge",
        resource="lake+duckdb",
        details={
            "retention_days": keep_days,
            "audit_retention_days": audit_keep_days,
            "cutoffs": dict(result.cutoffs),
            "days": list(result.days),
            "rows": dict(result.rows),
        },
    )


def record(trail: AuditTrail | None, event: AuditEvent) -> None:
    """Record ``event`` when the worker has an audit trail (its lifespan made one)."""
    if trail is not None:
        trail.record(event)
