"""The study's stages, stop rule, pruner, box and report on a fake objective (no training), and bad settings."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from evaluation.tuning.report import NOT_ENOUGH, render_html, summarize
from evaluation.tuning.space import Box, full_box, refine_box, suggest, training_settings
from evaluation.tuning.stopping import FIRST_LOSS, STAGE, STOPPED, DivergencePruner, plateaued
from evaluation.tuning.study import TuningError, open_study, run_study
from feedback.errors import ConfigError
from feedback.settings import TrainingSettings, TuningSettings, load_settings

# the values a fake objective returns, by trial number: four coarse trials, then a refinement that stalls
FAKE_VALUES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4995, 0.4992, 0.3, 0.2, 0.1]
TUNING = TuningSettings(coarse_trials=4, patience=2, min_delta=0.001, max_trials=20, prune=False)


def fake_objective(trial: optuna.Trial, stage: str, box: Box) -> float:
    """A stand-in for training: draws the parameters, returns the scripted value of its trial number."""
    trial.set_user_attr(STAGE, stage)
    suggest(trial, box)
    return FAKE_VALUES[trial.number]


def quiet_study(path: Path, tuning: TuningSettings = TUNING) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return open_study(path, "fake", tuning, context={"dataset": "data"})


def test_the_plateau_rule_compares_the_best_before_and_after_the_window() -> None:
    assert not plateaued([0.9, 0.8], patience=2, min_delta=0.001)  # no value before the window yet
    assert not plateaued([0.9, 0.8, 0.7], patience=2, min_delta=0.001)  # improved 0.2
    assert plateaued([0.5, 0.4995, 0.4992], patience=2, min_delta=0.001)  # improved 0.0008
    assert not plateaued([0.5, 0.4995, 0.499], patience=2, min_delta=0.001)  # improved exactly 0.001
    assert plateaued([0.5, None, 0.7], patience=2, min_delta=0.001)  # pruned and worse trials improve nothing
    assert not plateaued([None, 0.5, 0.4], patience=2, min_delta=0.001)  # the first value is an improvement
    assert plateaued([None, None, None], patience=2, min_delta=0.001)  # nothing finishes at all


def test_the_refinement_stops_once_the_best_improves_by_less_than_min_delta(tmp_path: Path) -> None:
    study = quiet_study(tmp_path / "s.sqlite3")

    run = run_study(study, fake_objective, TUNING, full_box(TUNING, new_adapter=True))

    # refinement trial 6 improved the best by 0.0008 over the two trials before: the study stops there
    assert [t.user_attrs[STAGE] for t in study.trials] == ["coarse"] * 4 + ["refine"] * 3
    assert (run.trials_before, run.trials_after, study.best_value) == (0, 7, 0.4992)
    assert (
        run.stopped == study.user_attrs[STOPPED] == "the best value improved by less than 0.001 over the last 2 trials"
    )
    again = run_study(quiet_study(tmp_path / "s.sqlite3"), fake_objective, TUNING, full_box(TUNING, new_adapter=True))
    assert (again.trials_before, again.trials_after) == (7, 7)  # a stopped study stays stopped


def test_a_stored_study_resumes_with_its_trials_and_the_same_coarse_sequence(tmp_path: Path) -> None:
    full = full_box(TUNING, new_adapter=True)
    first = run_study(
        quiet_study(tmp_path / "s.sqlite3"), fake_objective, TUNING.model_copy(update={"max_trials": 3}), full
    )
    resumed = quiet_study(tmp_path / "s.sqlite3")
    second = run_study(resumed, fake_objective, TUNING.model_copy(update={"max_trials": 5}), full)
    whole = quiet_study(tmp_path / "whole.sqlite3")
    run_study(whole, fake_objective, TUNING.model_copy(update={"max_trials": 5}), full)

    assert (first.trials_after, second.trials_before, second.trials_after) == (3, 3, 5)
    assert [t.user_attrs[STAGE] for t in resumed.trials] == ["coarse"] * 4 + ["refine"]
    # the interrupted coarse stage drew the rest of the same Sobol sequence
    assert [t.params for t in resumed.trials[:4]] == [t.params for t in whole.trials[:4]]
    assert second.stopped is None
    with pytest.raises(TuningError, match="was tuned on the dataset 'data', not 'other'"):
        open_study(tmp_path / "s.sqlite3", "fake", TUNING, context={"dataset": "other"})


def test_the_refinement_box_is_the_best_trials_bounds_widened_and_clipped() -> None:
    full: Box = {"learning_rate": (1e-4, 1e-2), "epochs": (1.0, 5.0), "warmup_share": (0.05, 0.1)}
    top = [
        {"learning_rate": 1e-3, "epochs": 2, "warmup_share": 0.06},
        {"learning_rate": 2e-3, "epochs": 3, "warmup_share": 0.1},
    ]
    box = refine_box(full, top, widen=0.25)
    # learning rate: log range of 2 decades, widened by half a decade each side
    assert box["learning_rate"][0] == pytest.approx(1e-3 / math.sqrt(10), rel=1e-9)
    assert box["learning_rate"][1] == pytest.approx(2e-3 * math.sqrt(10), rel=1e-9)
    assert box["epochs"] == (1.0, 4.0)
    assert box["warmup_share"] == (0.05, 0.1)  # 0.06 - 0.0125 and 0.1 + 0.0125 clip to the full range
    assert refine_box(full, [], widen=0.25) == full


def test_trial_parameters_become_validated_training_settings() -> None:
    base = TrainingSettings(rank=8, alpha=16, threads=1)
    tuned = training_settings(base, {"rank": 5, "alpha_ratio": 1.5, "learning_rate": 3e-4, "warmup_share": 0.07})
    assert (tuned.rank, tuned.alpha, tuned.learning_rate, tuned.warmup_share, tuned.threads) == (5, 8, 3e-4, 0.07, 1)
    assert set(full_box(TuningSettings(), new_adapter=False)) == {
        "learning_rate",
        "epochs",
        "batch_size",
        "warmup_share",
    }


def test_the_pruner_stops_a_diverging_trial_at_once() -> None:
    study = optuna.create_study(pruner=DivergencePruner(divergence_factor=1.5, startup_trials=3))
    steady, diverging, broken = study.ask(), study.ask(), study.ask()
    for trial in (steady, diverging, broken):
        trial.set_user_attr(FIRST_LOSS, 2.0)
    steady.report(2.9, 1)
    diverging.report(3.1, 1)
    broken.report(math.nan, 1)
    assert [t.should_prune() for t in (steady, diverging, broken)] == [False, True, True]


def test_the_report_has_the_best_settings_the_trials_and_their_plot(tmp_path: Path) -> None:
    study = quiet_study(tmp_path / "s.sqlite3")
    full = full_box(TUNING, new_adapter=True)
    empty = summarize(study, full)
    assert (empty["best"], empty["importance"], empty["importance_error"]) == (None, {}, NOT_ENOUGH)
    run_study(study, fake_objective, TUNING, full)

    summary = summarize(study, full)
    page = render_html(summary)

    assert summary["best"]["trial"] == 6
    assert [r["state"] for r in summary["trials"]] == ["complete"] * 7
    assert set(summary["importance"]) == set(full)
    assert sum(summary["importance"].values()) == pytest.approx(1.0, abs=1e-5)
    assert page.count("<circle") == 7
    assert "<polyline" in page
    assert "Best: trial 6, held-out loss 0.49920" in page


@pytest.mark.parametrize(
    ("tuning", "message"),
    [
        (
            {"learning_rate": (1e-3, 1e-4)},
            "tuning.learning_rate: Value error, low (0.001) must not exceed high (0.0001)",
        ),
        ({"rank": (0, 8)}, "tuning.rank: Value error, [0, 8] must lie within [1, 256]"),
        ({"warmup_share": (0.05, 0.9)}, "tuning.warmup_share: Value error, [0.05, 0.9] must lie within [0.0, 0.5]"),
    ],
)
def test_an_invalid_range_is_refused_naming_the_field(tuning: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(tuning=tuning)
    assert message in str(refused.value)
