"""What the refresh takes from the studies: the newest study's best settings, and where tuning finds its data.

The refresh trains with the best trial of the study that completed a trial most recently (resuming
an older study makes it the newest again), applied over ``training`` settings; the adapter's
lineage records which study, trial and value they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import OptunaError
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from evaluation.tuning.space import training_settings
from evaluation.tuning.study import TuningError, storage_path
from feedback.curation import HELD_OUT_FILE, MANIFEST_FILE, TRAIN_FILE
from feedback.settings import Settings, TrainingSettings


@dataclass(frozen=True)
class Tuned:
    """Training settings with a study's best parameters, and the record of where they came from."""

    training: TrainingSettings
    record: dict[str, Any]  # study, storage, trial, value, params, dataset


def tuned_training(settings: Settings) -> Tuned | None:
    """The newest study's best settings over ``settings.training``; None when off or no study has a result.

    Raises:
        TuningError: the studies' file cannot be read.
    """
    path = storage_path(settings)
    if not settings.tuning.apply_to_refresh or not path.is_file():
        return None
    try:
        study = _newest_study(f"sqlite:///{path}")
    except (SQLAlchemyError, OptunaError, RuntimeError, ValueError) as exc:
        raise TuningError(f"the studies in {str(path)!r} cannot be read: {exc}") from exc
    if study is None:
        return None
    trial = study.best_trial
    record = {
        "study": study.study_name,
        "storage": str(path.resolve()),
        "trial": trial.number,
        "value": trial.value,
        "params": dict(trial.params),
        "dataset": study.user_attrs.get("dataset"),
    }
    return Tuned(training_settings(settings.training, trial.params), record)


def _newest_study(storage: str) -> optuna.Study | None:
    """The study that completed a trial most recently, or None."""
    newest: tuple[Any, optuna.Study] | None = None
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        completed = [t.datetime_complete for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        last = max((c for c in completed if c is not None), default=None)
        if last is not None and (newest is None or last > newest[0]):
            newest = (last, study)
    return None if newest is None else newest[1]


def latest_dataset(work_dir: Path) -> Path | None:
    """The newest curated dataset under the refresh's work directory (train, held-out and manifest), or None."""
    found = [
        d
        for d in work_dir.glob("*/dataset")
        if all((d / name).is_file() for name in (TRAIN_FILE, HELD_OUT_FILE, MANIFEST_FILE))
    ]
    return max(found, key=lambda d: ((d / MANIFEST_FILE).stat().st_mtime, str(d)), default=None)
