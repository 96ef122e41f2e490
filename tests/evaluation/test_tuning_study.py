"""A real study on the default model: tiny trials train in the training subprocess and are scored as the gate
scores; the study resumes; a diverging trial is pruned; the refresh trains with the best settings found."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from pipeline_events import catalogue_answers

from evaluation.tuning.best import latest_dataset, tuned_training
from evaluation.tuning.objective import TrainingObjective, TuningData
from evaluation.tuning.run import tune
from evaluation.tuning.space import full_box
from evaluation.tuning.stopping import DivergencePruner
from evaluation.tuning.study import storage_path
from feedback import catalogue
from feedback.deployments import initial_state
from feedback.model.runtime import model_name
from feedback.registry import AdapterRegistry
from feedback.settings import Settings
from feedback.store import DuckDBStore
from services.worker.refresh import Refresher

# two optimizer steps a trial (8 examples, batch 4, one epoch): only the learning rate and warm-up vary
TUNING = {
    "coarse_trials": 2,
    "max_trials": 3,
    "patience": 1,
    "report_points": 2,
    "rank": (4, 4),
    "alpha_ratio": (2.0, 2.0),
    "epochs": (1, 1),
    "batch_size": (4, 4),
    "learning_rate": (1e-4, 1.0),
}
GATE = {"heldout_cap": 4, "max_new_tokens": 24, "prompt_control": False}


def make_settings(tmp_path: Path, model_dir: Path, **sections: Any) -> Settings:
    golden = tmp_path / "golden.jsonl"
    catalogue.write_jsonl(catalogue.golden_examples()[:4], golden)
    base: dict[str, Any] = {
        "model": {"cache_dir": model_dir.parent, "registry_dir": tmp_path / "registry"},
        "refresh": {"work_dir": tmp_path / "refreshes", "min_train_examples": 8, "deploy": False},
        "selection": {"replay_share": 0.0, "strata": 1, "confidence_threshold": 0.5},
        "training": {"threads": 1, "max_steps": 2, "batch_size": 4},
        "curation": {"held_out_share": 0.3},
        "gate": GATE | {"golden_path": golden},
        "tuning": TUNING,
    }
    return Settings(**(base | sections))


def write_dataset(directory: Path) -> Path:
    """A curated dataset of short catalogue questions: 8 to train on, 4 held out."""
    questions = catalogue.make_questions(catalogue.build_catalogue(3, 12), 3, 12, listed=1)
    catalogue.write_jsonl([q.example() for q in questions[:8]], directory / "train.jsonl")
    catalogue.write_jsonl([q.example() for q in questions[8:]], directory / "held_out.jsonl")
    (directory / "manifest.json").write_text(json.dumps({"files": {}}), encoding="utf-8")
    return directory


@pytest.fixture(autouse=True)
def _quiet_optuna() -> Iterator[None]:
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(before)


@pytest.mark.model
def test_a_diverging_trial_is_pruned_and_a_sane_one_completes(tmp_path: Path, model_dir: Path) -> None:
    settings = make_settings(tmp_path, model_dir)
    data = TuningData(model_dir, write_dataset(tmp_path / "data"), None, settings.training, settings.gate)
    box = full_box(settings.tuning, new_adapter=True) | {"learning_rate": (1e-4, 1.0), "warmup_share": (0.05, 0.05)}
    study = optuna.create_study(pruner=DivergencePruner(divergence_factor=1.5, startup_trials=3))
    study.enqueue_trial({"learning_rate": 1e-3})
    study.enqueue_trial({"learning_rate": 1.0})  # a learning rate no LoRA survives: its loss explodes

    study.optimize(lambda trial: TrainingObjective(data, report_points=2)(trial, "coarse", box), n_trials=2)

    sane, diverging = study.trials
    assert (sane.state, diverging.state) == (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert sane.params["learning_rate"] == 1e-3
    assert 0 < sane.value < 10
    assert diverging.intermediate_values[diverging.last_step] > 1.5 * diverging.user_attrs["first_loss"]


@pytest.mark.model
def test_a_study_resumes_and_the_refresh_trains_with_its_best_settings(tmp_path: Path, model_dir: Path) -> None:
    settings = make_settings(tmp_path, model_dir)
    dataset = write_dataset(tmp_path / "refreshes" / "2026-12-01" / "dataset")
    assert latest_dataset(settings.refresh.work_dir) == dataset

    first = tune(settings, dataset, study="cpu")
    more = settings.model_copy(update={"tuning": settings.tuning.model_copy(update={"max_trials": 4})})
    resumed = tune(more, dataset, study="cpu")

    assert (first.run.trials_before, first.run.trials_after) == (0, 3)
    assert (resumed.run.trials_before, resumed.run.trials_after) == (3, 4)
    assert [r["stage"] for r in resumed.summary["trials"]] == ["coarse", "coarse", "refine", "refine"]
    assert storage_path(settings).is_file()
    assert "<svg" in resumed.report.read_text(encoding="utf-8")
    best = resumed.summary["best"]
    tuned = tuned_training(settings)
    assert tuned is not None
    assert (tuned.record["study"], tuned.record["trial"], tuned.record["value"]) == (
        "cpu",
        best["trial"],
        best["value"],
    )
    assert tuned.training.learning_rate == best["params"]["learning_rate"]

    store = DuckDBStore(tmp_path / "refresh.duckdb")
    try:
        base = model_name(model_dir)
        store.write_batch(catalogue_answers(base, 24))
        state = initial_state(base, (5, 10))
        refresher = Refresher(settings, store, deployment=lambda: state, publish=lambda s: s, echo=None)
        outcome = refresher.run("2026-12-02")
    finally:
        store.close()

    assert outcome["status"] in ("waiting", "rejected"), outcome["message"]
    lineage = AdapterRegistry(settings.model.registry_dir).lineage(outcome["version"])
    assert lineage["tuning"] == tuned.record
    assert lineage["training"]["settings"]["learning_rate"] == best["params"]["learning_rate"]
    assert lineage["training"]["settings"]["warmup_share"] == best["params"]["warmup_share"]
