"""The weekly tuning study (``tuning.schedule_enabled``, off by default), run by the refresh lease holder.

It tunes on the newest refresh's curated dataset, continuing the champion's adapter (a new LoRA
when the champion is the base model), as the study ``<tuning.study>-<date>``: each week's data is a
new study, since held-out losses of different splits do not compare. The next refresh trains with
its best settings (the newest study's, :func:`evaluation.tuning.best.tuned_training`). It never runs
beside a refresh: while one runs, the week is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from evaluation.tuning.best import latest_dataset
from evaluation.tuning.run import TuneResult, tune
from feedback.deployments import DeploymentState, split_version
from feedback.errors import FlywheelError
from services.worker.refresh import Refresher

log = logging.getLogger(__name__)


def run_weekly_study(refresher: Refresher, deployment: Callable[[], DeploymentState], key: str) -> TuneResult | None:
    """Run the study of the week ``key`` (a date); None when there is no dataset, a refresh runs, or it fails."""
    settings = refresher.settings
    dataset = latest_dataset(settings.refresh.work_dir)
    if dataset is None:
        log.info("weekly study %s skipped: no curated dataset under %s yet", key, settings.refresh.work_dir)
        return None
    try:
        with refresher.holding("the weekly study"):
            version = split_version(deployment().champion)[1]
            parent = None if version is None else refresher.registry.fetch(version)
            result = tune(settings, dataset, study=f"{settings.tuning.study}-{key}", parent_adapter=parent)
    except FlywheelError as exc:  # RefreshBusy, TuningError, RegistryError ...: logged, the next week tries again
        log.warning("weekly study %s did not run: %s", key, exc)
        return None
    log.info("weekly study %s: %s; best %s", key, result.run, result.summary["best"])
    return result
