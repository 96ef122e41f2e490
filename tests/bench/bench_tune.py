"""Tuned against default training settings on the demo task: golden-set loss after one refresh's training.

The demo task is catalogue questions (``feedback.catalogue``, the prompts the demo's users send).
One run, the same data for every side: a curated dataset of ``BENCH_TUNE_TRAIN`` training and
``BENCH_TUNE_HELD_OUT`` held-out questions (seed 7, not the golden set's); a study
(``evaluation.tuning``) of ``BENCH_TUNE_TRIALS`` trials (``BENCH_TUNE_COARSE`` coarse, the rest TPE
refinement) within ``BENCH_TUNE_MINUTES``, on the held-out split; then one training with the
defaults (``TrainingSettings()``) and one with the study's best, each a new LoRA on the base model.
The metric is the gate's golden-set metric: mean completion loss on the frozen golden set
(``evaluation/golden/catalogue.jsonl``, 40 questions no side trains or tunes on), lower is better.
Prints the base model's, the defaults' and the tuned settings' golden loss, the gain (absolute and
relative) and the tuning time. Training uses ``BENCH_TUNE_THREADS`` threads (default 2).

    PYTHONPATH=tests python tests/bench/bench_tune.py
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import optuna
import torch

from evaluation.gate import GOLDEN_PATH, completion_losses, gate_runtime
from evaluation.tuning.best import tuned_training
from evaluation.tuning.objective import heldout_loss
from evaluation.tuning.run import tune
from feedback import catalogue
from feedback.examples import read_examples
from feedback.model.source import prepare_model
from feedback.settings import Settings, TrainingSettings
from feedback.train_job import run_training
from feedback.training import TrainingJob
from services.cli.tune import trial_line

TRAIN = int(os.environ.get("BENCH_TUNE_TRAIN", "24"))
HELD_OUT = int(os.environ.get("BENCH_TUNE_HELD_OUT", "8"))
TRIALS = int(os.environ.get("BENCH_TUNE_TRIALS", "5"))
COARSE = int(os.environ.get("BENCH_TUNE_COARSE", "3"))
MINUTES = float(os.environ.get("BENCH_TUNE_MINUTES", "10"))
THREADS = int(os.environ.get("BENCH_TUNE_THREADS", "2"))


def write_dataset(directory: Path) -> Path:
    """Catalogue questions as the demo asks them (three catalogue entries in each prompt)."""
    questions = catalogue.make_questions(catalogue.build_catalogue(7), 7, TRAIN + HELD_OUT, id_prefix="bench")
    catalogue.write_jsonl([q.example() for q in questions[:TRAIN]], directory / "train.jsonl")
    catalogue.write_jsonl([q.example() for q in questions[TRAIN:]], directory / "held_out.jsonl")
    (directory / "manifest.json").write_text(json.dumps({"bench": "tune"}), encoding="utf-8")
    return directory


def train_and_score(settings: Settings, training: TrainingSettings, dataset: Path, out: Path) -> tuple[float, float]:
    """Train a new LoRA with ``training``; its held-out and golden losses."""
    job = TrainingJob(dataset / "train.jsonl", out, settings_model_dir(settings), None, training)
    result = run_training(job, echo=None)
    model_dir = settings_model_dir(settings)
    held = heldout_loss(model_dir, result.adapter_dir, read_examples(dataset / "held_out.jsonl"), settings.gate)
    return held, heldout_loss(model_dir, result.adapter_dir, read_examples(GOLDEN_PATH), settings.gate)


def settings_model_dir(settings: Settings) -> Path:
    return prepare_model(settings.model.source, settings.model.cache_dir)


def base_golden(settings: Settings) -> float:
    runtime, _ = gate_runtime(settings_model_dir(settings), settings.gate)
    with torch.no_grad():
        losses = completion_losses(runtime, [(e.messages, e.completion) for e in read_examples(GOLDEN_PATH)])
    return sum(losses) / len(losses)


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load "
        f"{os.getloadavg()[0]:.1f}; {TRAIN} train / {HELD_OUT} held-out questions, {TRIALS} trials "
        f"({COARSE} coarse), {THREADS} training threads"
    )
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        root = Path(tmp)
        settings = Settings(
            model={"registry_dir": root / "registry"},
            training={"threads": THREADS},
            tuning={"coarse_trials": COARSE, "max_trials": TRIALS, "max_minutes": MINUTES},
        )
        dataset = write_dataset(root / "dataset")
        defaults = settings.training
        started = time.monotonic()
        result = tune(settings, dataset, study="bench", progress=trial_line)
        tuning_s = time.monotonic() - started
        tuned = tuned_training(settings)
        assert tuned is not None, "no trial completed"
        base = base_golden(settings)
        default_held, default_golden = train_and_score(settings, defaults, dataset, root / "defaults")
        tuned_held, tuned_golden = train_and_score(settings, tuned.training, dataset, root / "tuned")
    gain = default_golden - tuned_golden
    print(f"tuning: {result.run.trials_after} trials in {tuning_s:.0f} s; stopped: {result.run.stopped or 'budget'}")
    print(f"best: {json.dumps(tuned.record['params'])}; importance {json.dumps(result.summary['importance'])}")
    print(f"golden loss: base model {base:.4f}, defaults {default_golden:.4f}, tuned {tuned_golden:.4f}")
    print(f"held-out loss: defaults {default_held:.4f}, tuned {tuned_held:.4f}")
    ratio = tuned_golden / default_golden
    print(f"gain on golden: {gain:+.4f} nats/token ({gain / default_golden:+.1%}); tuned/defaults {ratio:.3f}")


if __name__ == "__main__":
    main()
