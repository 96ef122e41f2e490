"""Tiny datasets for the training tests: a handful of short catalogue questions with known answers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from feedback.settings import TrainingSettings

ITEMS = [("lamp", 12), ("chair", 45), ("desk", 130), ("mug", 7)]

# Rank 4, two short steps of two examples: enough to move the weights, cheap on two shared cores.
TINY = TrainingSettings(rank=4, alpha=8, batch_size=2, max_steps=2, learning_rate=1e-3, threads=1)


def write_dataset(path: Path, n: int = 4) -> Path:
    """``n`` examples in the dataset format (JSONL)."""
    rows = []
    for i, (item, price) in enumerate((ITEMS * n)[:n]):
        rows.append(
            {
                "id": f"ex-{i}",
                "messages": [{"role": "user", "content": f"How much is the {item}?"}],
                "completion": f"The {item} costs {price} dollars.",
                "source": "confidence",
            }
        )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def digest(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory``, by relative path."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@contextmanager
def one_thread() -> Iterator[None]:
    """Train with one torch thread (as the training process does), then restore the session's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
