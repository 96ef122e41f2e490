"""The refresh's schedule: cron in a time zone, daily-job misfire settings, fired only with the lease."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from feedback.errors import ConfigError
from feedback.settings import SchedulerSettings
from services.worker.refresh_schedule import JOB_ID, RefreshSchedule


def test_the_default_runs_daily_at_three_utc() -> None:
    schedule = RefreshSchedule(SchedulerSettings(), threading.Event(), lambda key: None)
    after = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert schedule.trigger.get_next_fire_time(None, after) == datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def test_the_cron_is_read_in_its_time_zone_across_daylight_saving() -> None:
    paris = ZoneInfo("Europe/Paris")
    schedule = RefreshSchedule(SchedulerSettings(timezone="Europe/Paris"), threading.Event(), lambda key: None)
    before_change = datetime(2026, 3, 28, 12, 0, tzinfo=paris)  # clocks go forward on the 29th
    fire = schedule.trigger.get_next_fire_time(None, before_change)
    assert fire == datetime(2026, 3, 29, 3, 0, tzinfo=paris)
    assert fire is not None
    assert fire.astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # CEST: UTC+2


def test_missed_runs_coalesce_into_one_within_the_grace_period() -> None:
    schedule = RefreshSchedule(SchedulerSettings(misfire_grace_s=7200), threading.Event(), lambda key: None)
    schedule.start()
    try:
        job = schedule._scheduler.get_job(JOB_ID)
        assert (job.coalesce, job.misfire_grace_time, job.max_instances) == (True, 7200, 1)
        assert schedule.next_run() is not None
    finally:
        schedule.stop()


def test_only_the_lease_holder_starts_the_refresh_keyed_by_the_local_date() -> None:
    lease = threading.Event()
    started: list[str] = []
    late_evening_utc = datetime(2026, 11, 29, 23, 30, tzinfo=UTC)
    schedule = RefreshSchedule(
        SchedulerSettings(timezone="Asia/Tokyo"),
        lease,
        started.append,
        now=lambda tz: late_evening_utc.astimezone(tz),
    )
    assert schedule.fire() is False
    assert started == []
    lease.set()
    assert schedule.fire() is True
    assert started == ["2026-11-30"]  # already the 30th in Tokyo


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "every day"}, r"scheduler.cron: 'every day' is not a crontab expression"),
        ({"timezone": "Mars/Olympus"}, r"scheduler.timezone: unknown time zone 'Mars/Olympus'"),
    ],
)
def test_a_bad_schedule_is_refused_with_the_setting_named(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RefreshSchedule(SchedulerSettings(**fields), threading.Event(), lambda key: None)
