"""The weekly study's schedule (off by default, lease holder only) and when it declines to run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from feedback.deployments import DeploymentState, initial_state
from feedback.errors import ConfigError
from feedback.settings import SchedulerSettings, Settings, TuningSettings
from feedback.store import DuckDBStore
from services.worker.refresh import RefreshBusy, Refresher
from services.worker.refresh_schedule import STUDY_JOB_ID, RefreshSchedule
from services.worker.weekly_study import run_weekly_study


@pytest.fixture
def refresher(tmp_path: Path) -> Iterator[Refresher]:
    store = DuckDBStore(tmp_path / "w.duckdb")
    settings = Settings(model={"registry_dir": tmp_path / "registry"}, refresh={"work_dir": tmp_path / "refreshes"})
    yield Refresher(settings, store, deployment=lambda: initial_state("base", (5,)), publish=lambda s: s, echo=None)
    store.close()


def test_the_weekly_study_is_off_by_default_and_runs_saturdays_for_the_lease_holder_only() -> None:
    assert TuningSettings().schedule_enabled is False
    lease, keys = threading.Event(), []
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    schedule = RefreshSchedule(SchedulerSettings(), lease, lambda key: None, now=lambda tz: now.astimezone(tz))
    schedule.add_study(TuningSettings().cron, keys.append, 3600)
    job = schedule._scheduler.get_job(STUDY_JOB_ID)
    assert job.trigger.get_next_fire_time(None, now) == datetime(2026, 12, 5, 1, 0, tzinfo=UTC)  # a Saturday
    job.func()
    lease.set()
    job.func()
    assert keys == ["2026-12-04"]
    with pytest.raises(ConfigError, match=r"tuning\.cron: 'weekly' is not a crontab expression"):
        schedule.add_study("weekly", keys.append, 3600)


def test_the_weekly_study_waits_for_a_dataset_and_never_runs_beside_a_refresh(
    refresher: Refresher, tmp_path: Path
) -> None:
    def champion() -> DeploymentState:
        return initial_state("base", (5,))

    assert run_weekly_study(refresher, champion, "2026-12-05") is None  # no refresh curated a dataset yet
    dataset = tmp_path / "refreshes" / "2026-12-04" / "dataset"
    dataset.mkdir(parents=True)
    for name in ("train.jsonl", "held_out.jsonl", "manifest.json"):
        (dataset / name).write_text("{}\n", encoding="utf-8")
    with refresher.holding("a refresh"):
        assert run_weekly_study(refresher, champion, "2026-12-05") is None  # busy: this week is skipped
        with pytest.raises(RefreshBusy, match="the weekly study waits for its next time"):
            refresher.holding("the weekly study").__enter__()
