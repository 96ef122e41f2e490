"""One trial of the study: train with the trial's settings, then score the held-out split as the gate does.

The value is the candidate's mean held-out completion loss (nats per token) on the gate's sample of
the held-out split (:func:`evaluation.gate.heldout_sample`), scored in the gate's precision: the
number the gate's main check compares with the champion's. The champion's loss is the same for
every trial, so the lowest loss is also the largest fall the gate would see.

Training runs in the refresh's training subprocess (:func:`feedback.train_job.run_training`,
no restarts). While it runs, the trial reads the loss curve from its latest checkpoint (written
``report_points`` times a run) and reports the mean training loss of each share of the run; when
the pruner says so, the subprocess is killed and the trial ends as pruned.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from evaluation.gate import CANDIDATE, GateExample, completion_losses, gate_runtime, heldout_sample
from evaluation.tuning.space import Box, suggest, training_settings
from evaluation.tuning.stopping import FIRST_LOSS, STAGE
from feedback.curation import HELD_OUT_FILE, TRAIN_FILE
from feedback.examples import read_examples
from feedback.model.adapters import AdapterSet
from feedback.settings import GateSettings, TrainingSettings
from feedback.train_job import run_training
from feedback.train_state import STATE_FILE, latest_checkpoint
from feedback.training import CHECKPOINTS_DIR, TrainingJob, TrainingResult, total_steps

POLL_S = 0.5  # how often a running trial's latest checkpoint is read


@dataclass(frozen=True)
class TuningData:
    """What every trial trains on and is scored with."""

    model_dir: Path  # the base model directory
    dataset_dir: Path  # a curated dataset: train.jsonl and held_out.jsonl
    parent_adapter: Path | None  # the champion's adapter the trials continue; None: a new LoRA
    training: TrainingSettings  # the settings the tuned parameters replace (threads, device, seed ...)
    gate: GateSettings  # held-out sample size and scoring precision

    def heldout(self) -> list[GateExample]:
        """The gate's sample of the held-out split."""
        return heldout_sample(read_examples(self.dataset_dir / HELD_OUT_FILE), self.gate.heldout_cap)

    def train_examples(self) -> int:
        """Examples in the training split."""
        return len(read_examples(self.dataset_dir / TRAIN_FILE))


def heldout_loss(model_dir: Path, adapter_dir: Path, heldout: Sequence[GateExample], gate: GateSettings) -> float:
    """Mean completion loss of the adapter on ``heldout``, scored as the gate scores (nats per token)."""
    runtime, _ = gate_runtime(model_dir, gate)
    adapters = AdapterSet(runtime)
    adapters.load(CANDIDATE, adapter_dir)
    with torch.no_grad():
        losses = completion_losses(runtime, [(e.messages, e.completion) for e in heldout])
    return sum(losses) / len(losses)


class TrainingObjective:
    """The study's objective: ``objective(trial, stage)`` trains and scores one trial."""

    def __init__(self, data: TuningData, report_points: int) -> None:
        self.data = data
        self.report_points = report_points
        self._heldout = data.heldout()
        self._examples = data.train_examples()

    def __call__(self, trial: optuna.Trial, stage: str, box: Box) -> float:
        """Train with the trial's parameters drawn from ``box``; the held-out loss."""
        trial.set_user_attr(STAGE, stage)
        settings = training_settings(self.data.training, suggest(trial, box))
        total = total_steps(self._examples, settings)
        settings = settings.model_copy(update={"restarts": 0, "checkpoint_every": max(1, total // self.report_points)})
        with tempfile.TemporaryDirectory(prefix=f"flywheel-trial-{trial.number}-") as tmp:
            job = TrainingJob(
                dataset=self.data.dataset_dir / TRAIN_FILE,
                output_dir=Path(tmp),
                model_dir=self.data.model_dir,
                parent_adapter=self.data.parent_adapter,
                settings=settings,
            )
            result = train_reporting(job, trial, _Reports(total, self.report_points))
            trial.set_user_attr("steps", result.steps)
            trial.set_user_attr("train_loss", result.loss_curve[-1])
            return heldout_loss(self.data.model_dir, result.adapter_dir, self._heldout, self.data.gate)


class _Reports:
    """Report points of a run of ``total`` steps: the mean loss of each share of the run, at step k of ``points``."""

    def __init__(self, total: int, points: int) -> None:
        ends = sorted({math.ceil(total * k / points) for k in range(1, points + 1)} - {0})
        self.ends = ends
        self.sent = 0

    def send(self, trial: optuna.Trial, curve: Sequence[float]) -> bool:
        """Report the shares ``curve`` completes that were not reported yet; whether the trial should be pruned."""
        if curve and self.sent == 0 and FIRST_LOSS not in trial.user_attrs:
            trial.set_user_attr(FIRST_LOSS, float(curve[0]))
        while self.sent < len(self.ends) and self.ends[self.sent] <= len(curve):
            start = self.ends[self.sent - 1] if self.sent else 0
            window = curve[start : self.ends[self.sent]]
            self.sent += 1
            trial.report(sum(window) / len(window), self.sent)
            if trial.should_prune():
                return True
        return False


def train_reporting(job: TrainingJob, trial: optuna.Trial, reports: _Reports) -> TrainingResult:
    """Run ``job`` in the training subprocess, reporting its loss to ``trial``; kill it when pruned.

    Raises:
        optuna.TrialPruned: the pruner stopped the trial.
        TrainingError: training failed.
    """
    pids: list[int] = []
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = run_training(job, on_spawn=pids.append, echo=None)
        except Exception as exc:  # handed to the trial's thread, which raises it
            outcome["error"] = exc

    thread = threading.Thread(target=work, name=f"trial-{trial.number}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL_S)
        if thread.is_alive() and reports.send(trial, _checkpoint_curve(job.output_dir / CHECKPOINTS_DIR)):
            _kill(pids)
            thread.join()
            raise optuna.TrialPruned(f"pruned at report {reports.sent} of {len(reports.ends)}")
    if "error" in outcome:
        raise outcome["error"]
    result: TrainingResult = outcome["result"]
    if reports.send(trial, result.loss_curve):
        raise optuna.TrialPruned(f"pruned at report {reports.sent} of {len(reports.ends)}")
    return result


def _checkpoint_curve(checkpoints: Path) -> list[float]:
    """The loss curve of the latest checkpoint, or an empty one (none yet, or replaced while read)."""
    latest = latest_checkpoint(checkpoints)
    if latest is None:
        return []
    try:
        saved = torch.load(latest / STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return []
    return [float(v) for v in saved["loss_curve"]]


def _kill(pids: list[int]) -> None:
    deadline = time.monotonic() + 30
    while not pids and time.monotonic() < deadline:  # the subprocess is being started
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, signal.SIGKILL)
