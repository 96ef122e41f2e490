"""The overview: the deployment, the decision engine's verdict, live traffic, consumer lag, refreshes.

Every part comes from something the worker already holds: the deployment it follows on the
deployments topic, the cached report of the current experiment (its verdict is the decision
engine's: :func:`evaluation.decision.decide` on the latest phase), the live rates, the consumer
lag (Kafka's end offsets against the offsets stored in DuckDB), the refresh ledger and the cron
schedule.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from feedback.access import Permission, Principal
from feedback.deployments import DeploymentState
from feedback.registry import AdapterRegistry
from feedback.settings import SchedulerSettings
from services.worker.dashboard.cache import Cached
from services.worker.protocol import PartitionLag
from services.worker.refresh import RefreshRun


def deployment_view(state: DeploymentState) -> dict[str, Any]:
    """The deployment as the gateway's admin API shows it (``flywheel deploy show``)."""
    return state.model_dump(
        mode="json", include={"deployment_id", "revision", "champion", "challenger", "mode", "ramp_step", "updated_by"}
    ) | {
        "ramp": list(state.ramp),
        "phase": state.phase,
        "challenger_percent": state.challenger_percent,
        "shadow_sample_rate": state.shadow_sample_rate,
        "updated_at": state.updated_at.isoformat(),
    }


def verdict_view(cached: Cached | None) -> dict[str, Any]:
    """The verdict of the cached report: ready (with its age), computing, or why there is none."""
    if cached is None:
        return {"status": "computing"}
    if cached.error is not None:
        return {"status": "unavailable", "reason": str(cached.error), "age_s": cached.age_s}
    return {"status": "ready", "verdict": cached.value["verdict"], "age_s": cached.age_s}


def lag_view(lags: tuple[list[PartitionLag], str | None] | None) -> dict[str, Any]:
    """Total and per-partition consumer lag (None while Kafka's end offsets are unknown)."""
    if lags is None:
        return {"total": None, "partitions": [], "error": "computing"}
    partitions, error = lags
    known = [p.lag for p in partitions if p.lag is not None]
    total = sum(known) if known and error is None else None
    return {"total": total, "partitions": [p.model_dump() for p in partitions], "error": error}


def refresh_view(registry: AdapterRegistry, running: RefreshRun | None, scheduler: SchedulerSettings) -> dict[str, Any]:
    """The last refresh in the ledger, the one running now, and when the schedule fires next."""
    ledger = registry.refreshes()
    last = ledger[-1] if ledger else None
    return {
        "last": None
        if last is None
        else {
            "key": last["key"],
            "finished": last.get("finished"),
            "status": (last.get("outcome") or {}).get("status", "running"),
            "message": (last.get("outcome") or {}).get("message"),
        },
        "running": _running(running),
        "next": next_refresh(scheduler),
    }


def _running(run: RefreshRun | None) -> dict[str, str] | None:
    return None if run is None or run.outcome is not None else {"run": run.run, "stage": run.stage}


def next_refresh(scheduler: SchedulerSettings, now: datetime | None = None) -> str | None:
    """When the cron schedule fires next (ISO time), or None when this worker does not schedule it."""
    if not scheduler.enabled:
        return None
    zone = ZoneInfo(scheduler.timezone)
    trigger = CronTrigger.from_crontab(scheduler.cron, timezone=zone)
    when: datetime | None = trigger.get_next_fire_time(None, now or datetime.now(zone))
    return None if when is None else when.isoformat()


def abilities(who: Principal) -> dict[str, Any]:
    """The caller's role and the actions its role may take (the page shows only those)."""
    return {
        "role": who.role,
        "name": who.name,
        "deploy": who.can(Permission.DEPLOY_RAMP),
        "refresh": who.can(Permission.REFRESH),
    }
