"""Resumable training checkpoints, written atomically.

A checkpoint is a directory ``<checkpoints>/step-<step, 8 digits>/`` holding the adapter in peft
format (usable on its own) and ``state.pt``: the trainable weights, the optimizer and scheduler
states, torch's RNG states, the step, the loss curve, the token counts and the job's fingerprint.
It is written under a temporary name, flushed to disk and renamed, so a crash leaves either the
whole checkpoint or none; older checkpoints are removed once the new one is in place.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from feedback.errors import FlywheelError

STATE_FILE = "state.pt"
PREFIX = "step-"


class TrainingError(FlywheelError):
    """A training job could not run: bad dataset, unloadable parent adapter, foreign checkpoint."""


@dataclass
class TrainState:
    """Where a run stands: everything the loop needs besides the model and optimizer."""

    fingerprint: str  # the job's fingerprint; a checkpoint resumes only the job that wrote it
    step: int = 0  # optimizer steps taken
    loss_curve: list[float] = field(default_factory=list)  # mean completion loss of each step
    tokens: int = 0  # non-padding tokens read
    completion_tokens: int = 0  # tokens the loss covered

    def advance(self, loss: float, tokens: int, completion_tokens: int) -> None:
        """Record one optimizer step with mean loss ``loss`` over a batch of that many tokens."""
        self.step += 1
        self.loss_curve.append(loss)
        self.tokens += tokens
        self.completion_tokens += completion_tokens


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint under ``checkpoints``, or None."""
    found = sorted(p for p in checkpoints.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None


def write_checkpoint(
    checkpoints: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
) -> Path:
    """Write the checkpoint of ``state.step`` atomically and drop older ones; return its directory."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    target = checkpoints / f"{PREFIX}{state.step:08d}"
    staging = checkpoints / f".staging-{state.step:08d}"
    shutil.rmtree(staging, ignore_errors=True)
    with warnings.catch_warnings():
        # peft asks transformers 5 for a deprecated alias; nothing for us to change.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.save_pretrained(staging, save_embedding_layers=False)
    trainable = {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
    torch.save(
        {
            "fingerprint": state.fingerprint,
            "step": state.step,
            "loss_curve": state.loss_curve,
            "tokens": state.tokens,
            "completion_tokens": state.completion_tokens,
            "weights": trainable,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        staging / STATE_FILE,
    )
    _fsync_tree(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    _fsync_dir(checkpoints)
    for older in checkpoints.glob(f"{PREFIX}*"):
        if older != target:
            shutil.rmtree(older, ignore_errors=True)
    return target


def restore(
    checkpoint: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    expected: str,
) -> TrainState:
    """Load ``checkpoint`` into the model, optimizer, scheduler and RNG; return its state.

    Raises:
        TrainingError: the checkpoint is unreadable or was written by another job.
    """
    try:
        saved = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise TrainingError(f"checkpoint {str(checkpoint)!r} is unreadable: {exc}") from exc
    if saved["fingerprint"] != expected:
        raise TrainingError(
            f"checkpoint {str(checkpoint)!r} belongs to a job with other data, settings or parent adapter; "
            "train into a fresh output directory"
        )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(saved["weights"][name])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng_cpu"])
    if saved["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng_cuda"])
    return TrainState(
        fingerprint=expected,
        step=saved["step"],
        loss_curve=list(saved["loss_curve"]),
        tokens=saved["tokens"],
        completion_tokens=saved["completion_tokens"],
    )


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
