"""The stored study: open or resume it, run its two stages, and read its best settings back.

Studies live in one SQLite file (``<registry>/studies/studies.sqlite3`` unless
``tuning.storage_dir`` says otherwise), so a study interrupted or out of budget resumes where it
stopped: the coarse stage draws the rest of its scrambled Sobol sequence, and the refinement's box
is computed again from the same best coarse trials. A run:

1. **coarse**: ``coarse_trials`` quasi-random trials over the configured ranges (fewer when some
   already ran).
2. **refine**: TPE in the box around the best ``top_k`` coarse trials, every earlier trial its
   evidence, until the plateau rule (:mod:`evaluation.tuning.stopping`) holds.

Either stage ends when the study holds ``max_trials`` finished trials or the run has used its
minutes (a trial already started finishes). The study records the dataset it was tuned on and
refuses another one: held-out losses on different splits do not compare.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from evaluation.tuning.space import Box, refine_box
from evaluation.tuning.stopping import FINISHED, STAGE, STOPPED, DivergencePruner, PlateauStop
from feedback.errors import FlywheelError, ModelError
from feedback.settings import Settings, TuningSettings
from feedback.train_state import TrainingError

STUDIES_FILE = "studies.sqlite3"
Objective = Callable[[optuna.Trial, str, Box], float]  # (trial, stage, box) -> held-out loss
Progress = Callable[[optuna.Study, FrozenTrial], None]  # told each finished trial


class TuningError(FlywheelError):
    """A study cannot run: another dataset than it was tuned on, or nothing to tune on."""


@dataclass(frozen=True)
class StudyRun:
    """What one run of a study did."""

    study: str
    trials_before: int  # finished trials the study held when the run started
    trials_after: int  # ... and when it ended
    stopped: str | None  # why the refinement stopped; None while it may go on
    seconds: float


def storage_path(settings: Settings) -> Path:
    """The SQLite file of the studies."""
    return (settings.tuning.storage_dir or settings.model.registry_dir / "studies") / STUDIES_FILE


def open_study(path: Path, name: str, tuning: TuningSettings, *, context: dict[str, Any] | None = None) -> optuna.Study:
    """Open the study ``name`` in ``path``, created when missing with ``context`` (dataset, space) as its attributes.

    Raises:
        TuningError: ``context`` names another dataset than the stored study's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pruner: optuna.pruners.BasePruner = (
        DivergencePruner(tuning.divergence_factor, tuning.prune_startup_trials)
        if tuning.prune
        else optuna.pruners.NopPruner()  # None would be Optuna's median pruner
    )
    study = optuna.create_study(
        storage=f"sqlite:///{path}", study_name=name, direction="minimize", load_if_exists=True, pruner=pruner
    )
    stored = study.user_attrs
    if context is None:
        return study
    if "dataset" in stored and stored["dataset"] != context["dataset"]:
        raise TuningError(
            f"study {name!r} was tuned on the dataset {stored['dataset']!r}, not {context['dataset']!r}: "
            "held-out losses of different splits do not compare; name a new study (--study)"
        )
    for key, value in ({"created": datetime.now(UTC).isoformat()} | context).items():
        if key not in stored:
            study.set_user_attr(key, value)
    return study


def run_study(
    study: optuna.Study,
    objective: Objective,
    tuning: TuningSettings,
    full: Box,
    *,
    progress: Progress | None = None,
) -> StudyRun:
    """Run the coarse stage's missing trials, then the refinement, within the budget; what the run did."""
    started = time.monotonic()
    before = len(study.get_trials(deepcopy=False, states=FINISHED))
    deadline = started + tuning.max_minutes * 60
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
        MaxTrialsCallback(tuning.max_trials, states=FINISHED)
    ]
    if progress is not None:
        callbacks.append(progress)
    coarse_done = len(_stage(study, "coarse"))
    if coarse_done < tuning.coarse_trials:
        study.sampler = _sobol(tuning.seed)
        _optimize(study, objective, "coarse", full, tuning.coarse_trials - coarse_done, deadline, tuning, callbacks)
    stop = PlateauStop(tuning.patience, tuning.min_delta)
    if len(_stage(study, "coarse")) >= tuning.coarse_trials and STOPPED not in study.user_attrs:
        box = refinement_box(study, full, tuning)
        # a resumed run draws new points: the seed moves on with the trials already in the study
        study.sampler = optuna.samplers.TPESampler(seed=tuning.seed + len(study.trials), n_startup_trials=0)
        _optimize(study, objective, "refine", box, tuning.max_trials, deadline, tuning, [*callbacks, stop])
    after = len(study.get_trials(deepcopy=False, states=FINISHED))
    stopped = study.user_attrs.get(STOPPED)
    return StudyRun(study.study_name, before, after, stopped, time.monotonic() - started)


def refinement_box(study: optuna.Study, full: Box, tuning: TuningSettings) -> Box:
    """The box around the best ``top_k`` completed coarse trials (the full box when none completed)."""
    done = [t for t in _stage(study, "coarse") if t.state == TrialState.COMPLETE and t.value is not None]
    top = sorted(done, key=lambda t: (t.value, t.number))[: tuning.top_k]
    return refine_box(full, [t.params for t in top], tuning.widen) if top else dict(full)


def _optimize(
    study: optuna.Study,
    objective: Objective,
    stage: str,
    box: Box,
    n_trials: int,
    deadline: float,
    tuning: TuningSettings,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]],
) -> None:
    remaining = tuning.max_trials - len(study.get_trials(deepcopy=False, states=FINISHED))
    seconds = deadline - time.monotonic()
    if remaining <= 0 or seconds <= 0:
        return
    study.optimize(
        lambda trial: objective(trial, stage, box),
        n_trials=min(n_trials, remaining),
        timeout=seconds,
        callbacks=callbacks,
        catch=(TrainingError, ModelError),  # a trial that cannot train or load fails alone; the study goes on
        gc_after_trial=True,
    )


def _stage(study: optuna.Study, stage: str) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.user_attrs.get(STAGE) == stage]


def _sobol(seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        # Optuna marks its quasi-Monte Carlo sampler experimental; its sequence is what the coarse stage needs
        warnings.simplefilter("ignore", ExperimentalWarning)
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
