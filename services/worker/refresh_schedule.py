"""The daily refresh's schedule: APScheduler's cron trigger, fired only while holding the lease.

The trigger reads ``scheduler.cron`` in ``scheduler.timezone`` (time-zone aware: 03:00 in
Europe/Paris stays 03:00 local across daylight-saving changes). For a daily job, ``coalesce``
folds runs missed while the worker was down into one, and ``misfire_grace_s`` still starts a
missed run that late (beyond it, the day is skipped and the next day's run comes as usual).
A firing does nothing unless this worker holds the refresh lease (``feedback.lease``); the
refresh it starts is keyed by the date in the schedule's time zone, which the registry runs once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from feedback.errors import ConfigError
from feedback.settings import SchedulerSettings

log = logging.getLogger(__name__)

JOB_ID = "daily-refresh"
STUDY_JOB_ID = "weekly-study"


class RefreshSchedule:
    """Fires ``refresh(date_key)`` on the cron schedule while ``lease`` is held."""

    def __init__(
        self,
        settings: SchedulerSettings,
        lease: threading.Event,
        refresh: Callable[[str], object],
        *,
        now: Callable[[ZoneInfo], datetime] = datetime.now,
    ) -> None:
        try:
            self.timezone = ZoneInfo(settings.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"scheduler.timezone: unknown time zone {settings.timezone!r}") from exc
        try:
            self.trigger = CronTrigger.from_crontab(settings.cron, timezone=self.timezone)
        except ValueError as exc:
            raise ConfigError(f"scheduler.cron: {settings.cron!r} is not a crontab expression: {exc}") from exc
        self._lease = lease
        self._refresh = refresh
        self._now = now
        self._scheduler = BackgroundScheduler(timezone=self.timezone)
        self._scheduler.add_job(
            self.fire,
            self.trigger,
            id=JOB_ID,
            coalesce=True,  # several missed runs become one
            misfire_grace_time=settings.misfire_grace_s,
            max_instances=1,  # a refresh still running when the next one is due is not doubled
        )

    def date_key(self) -> str:
        """Today's date in the schedule's time zone: the refresh's key."""
        return self._now(self.timezone).date().isoformat()

    def fire(self) -> bool:
        """Start today's refresh if this worker holds the lease; whether it started one."""
        if not self._lease.is_set():
            log.info("refresh due, but another worker holds the lease")
            return False
        key = self.date_key()
        log.info("starting the scheduled refresh %s", key)
        self._refresh(key)
        return True

    def add_study(self, cron: str, study: Callable[[str], object], misfire_grace_s: int) -> None:
        """Also run ``study(date_key)`` on ``cron`` (``tuning.cron``) in the same time zone, while holding the lease."""
        try:
            trigger = CronTrigger.from_crontab(cron, timezone=self.timezone)
        except ValueError as exc:
            raise ConfigError(f"tuning.cron: {cron!r} is not a crontab expression: {exc}") from exc

        def fire() -> None:
            if self._lease.is_set():
                study(self.date_key())

        self._scheduler.add_job(
            fire, trigger, id=STUDY_JOB_ID, coalesce=True, misfire_grace_time=misfire_grace_s, max_instances=1
        )

    def next_run(self) -> datetime | None:
        """When the job fires next (None before ``start``)."""
        job = self._scheduler.get_job(JOB_ID)
        when: datetime | None = getattr(job, "next_run_time", None)
        return when

    def start(self) -> None:
        """Start the scheduler's thread."""
        self._scheduler.start()

    def stop(self) -> None:
        """Stop the scheduler without waiting for a running refresh."""
        self._scheduler.shutdown(wait=False)
