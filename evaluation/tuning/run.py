"""One tuning run from settings: find the data, open (or resume) the study, run it, write its report.

Used by ``flywheel tune`` and by the worker's weekly study. The trials train from
``parent_adapter`` (the champion's adapter; None: a new LoRA, whose rank and alpha are then tuned
too) on the curated dataset ``dataset_dir``, with ``settings.training`` for everything not tuned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.tuning.objective import TrainingObjective, TuningData
from evaluation.tuning.report import render_html, summarize
from evaluation.tuning.space import full_box
from evaluation.tuning.study import Progress, StudyRun, TuningError, open_study, run_study, storage_path
from feedback.curation import HELD_OUT_FILE, MANIFEST_FILE, TRAIN_FILE
from feedback.model.source import prepare_model
from feedback.settings import Settings

STUDY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # also the report's file name


@dataclass(frozen=True)
class TuneResult:
    """A finished run: what it did, the study's summary, and where its report is."""

    run: StudyRun
    summary: dict[str, Any]
    report: Path


def tune(
    settings: Settings,
    dataset_dir: Path,
    *,
    study: str | None = None,
    parent_adapter: Path | None = None,
    progress: Progress | None = None,
) -> TuneResult:
    """Run the study ``study`` (default ``tuning.study``) on ``dataset_dir`` within the budget; write its report.

    Raises:
        TuningError: the dataset is incomplete, or the study was tuned on another one.
        ModelError: the base model cannot be prepared.
    """
    missing = [n for n in (TRAIN_FILE, HELD_OUT_FILE, MANIFEST_FILE) if not (dataset_dir / n).is_file()]
    if missing:
        raise TuningError(f"{str(dataset_dir)!r} is not a curated dataset: no {', '.join(missing)}")
    name = study or settings.tuning.study
    if not STUDY_NAME.fullmatch(name):
        raise TuningError(f"study name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-'")
    full = full_box(settings.tuning, new_adapter=parent_adapter is None)
    data = TuningData(
        model_dir=prepare_model(settings.model.source, settings.model.cache_dir),
        dataset_dir=dataset_dir,
        parent_adapter=parent_adapter,
        training=settings.training,
        gate=settings.gate,
    )
    context = {
        "dataset": str(dataset_dir.resolve()),
        "parent_adapter": None if parent_adapter is None else str(parent_adapter),
        "space": {k: list(v) for k, v in full.items()},
    }
    path = storage_path(settings)
    stored = open_study(path, name, settings.tuning, context=context)
    if not data.heldout():
        raise TuningError(f"{str(dataset_dir / HELD_OUT_FILE)!r} holds no examples to score trials on")
    objective = TrainingObjective(data, settings.tuning.report_points)
    done = run_study(stored, objective, settings.tuning, full, progress=progress)
    summary = summarize(stored, full, settings.tuning.seed) | {"run": done.__dict__}
    report = path.parent / f"{name}.html"
    report.write_text(render_html(summary), encoding="utf-8")
    return TuneResult(done, summary, report)
