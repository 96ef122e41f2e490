"""Measure what a refresh bought, for the main job: catalogue accuracy with and without adapters, and the ablation.

Accuracy is :func:`feedback.catalogue.correct` on greedy answers to catalogue questions nobody
trained on. Two models answer the same questions, so their difference is tested with the exact
McNemar test (a two-sided binomial test on the questions only one of them got right).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from feedback import catalogue
from feedback.examples import read_examples, write_examples
from feedback.model.adapters import AdapterSet
from feedback.model.runtime import ModelRuntime, SamplingParams
from feedback.settings import TrainingSettings
from feedback.train_job import run_training
from feedback.training import TrainingJob

BASE = "base"


@dataclass(frozen=True)
class Accuracy:
    """Which questions one model answered correctly."""

    name: str
    right: tuple[bool, ...]

    @property
    def share(self) -> float:
        """Correct answers as a share of the questions."""
        return sum(self.right) / len(self.right) if self.right else 0.0


def answer_accuracy(
    runtime: ModelRuntime, adapters: Mapping[str, Path], questions: Sequence[catalogue.Question], max_tokens: int
) -> list[Accuracy]:
    """The base model's accuracy, then each adapter's (loaded on the base model), on ``questions``."""
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    loaded = AdapterSet(runtime)
    for name, path in adapters.items():
        loaded.load(name, path)
    results = []
    for name in (BASE, *adapters):
        with _active(loaded, name):
            answers = runtime.generate_batch([(q.messages, greedy) for q in questions])
        results.append(
            Accuracy(name, tuple(catalogue.correct(q, a.text) for q, a in zip(questions, answers, strict=True)))
        )
    return results


def mcnemar_p(before: Accuracy, after: Accuracy) -> float:
    """Exact two-sided McNemar p-value of the difference between two models on the same questions."""
    gained = sum(b and not a for a, b in zip(before.right, after.right, strict=True))
    lost = sum(a and not b for a, b in zip(before.right, after.right, strict=True))
    if gained + lost == 0:
        return 1.0
    return float(stats.binomtest(gained, gained + lost, 0.5).pvalue)


def dataset_correctness(dataset_dir: Path) -> dict[str, dict[str, int]]:
    """Per source, how many of a curated dataset's examples state the right fact (train and held-out)."""
    counts: dict[str, dict[str, int]] = {}
    for name in ("train.jsonl", "held_out.jsonl"):
        for example in read_examples(dataset_dir / name):
            question = catalogue.parse_question(example.messages)
            row = counts.setdefault(example.source, {"examples": 0, "correct": 0})
            row["examples"] += 1
            row["correct"] += int(question is not None and catalogue.correct(question, example.completion))
    return counts


def train_ablation(
    dataset: Path, sources: Sequence[str], model_dir: Path, out_dir: Path, settings: TrainingSettings
) -> tuple[Path, int]:
    """Train a new adapter on the dataset's examples from ``sources`` only; returns it and its example count."""
    kept = [e for e in read_examples(dataset) if e.source in sources]
    subset = out_dir / "train.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_examples(subset, kept)
    if not kept:
        return Path(), 0
    job = TrainingJob(dataset=subset, output_dir=out_dir / "training", model_dir=model_dir, settings=settings)
    return run_training(job, echo=None).adapter_dir, len(kept)


def examples_by_source(dataset: Path) -> dict[str, int]:
    """How many training examples each source gave."""
    counts: dict[str, int] = {}
    for example in read_examples(dataset):
        counts[example.source] = counts.get(example.source, 0) + 1
    return counts


def to_json(results: Sequence[Accuracy]) -> list[dict[str, Any]]:
    """The accuracies as JSON-ready rows."""
    return [{"name": r.name, "correct": sum(r.right), "questions": len(r.right)} for r in results]


def _active(adapters: AdapterSet, name: str) -> contextlib.AbstractContextManager[Any]:
    model: Any = adapters.model
    if model is None:  # no adapter loaded: the base model answers
        return contextlib.nullcontext()
    if name == BASE:
        return model.disable_adapter()  # type: ignore[no-any-return]
    model.set_adapter(name)
    return contextlib.nullcontext()
