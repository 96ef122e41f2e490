"""Training in a subprocess on the real default model: lower priority, crash and resume, clean failure."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from training_data import TINY, digest, write_dataset

from feedback.model.runtime import ModelRuntime
from feedback.train_job import run_training
from feedback.training import TrainingError, TrainingJob

# Six steps with a checkpoint every two: a run killed at its first checkpoint has work left to resume.
RESUMABLE = TINY.model_copy(update={"epochs": 3, "max_steps": 6, "checkpoint_every": 2, "restarts": 1})


@pytest.fixture(scope="module")
def champion(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A champion adapter (random LoRA B, so it is not a no-op)."""
    torch.manual_seed(4)
    runtime = ModelRuntime.load(model_dir)
    out = tmp_path_factory.mktemp("champion")
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        get_peft_model(runtime.model, config).save_pretrained(out)
    return out


def kill_at_first_checkpoint(checkpoints: Path, spawned: list[int], killed: list[int]) -> threading.Thread:
    """A thread that waits for the first checkpoint, then SIGKILLs the first training process."""

    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if spawned and any(checkpoints.glob("step-*")):
                os.kill(spawned[0], signal.SIGKILL)
                killed.append(spawned[0])
                return
            time.sleep(0.02)

    return threading.Thread(target=watch, daemon=True)


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_with_the_same_adapter(
    model_dir: Path, champion: Path, tmp_path: Path
) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl", n=4)
    before = digest(champion)
    straight = run_training(TrainingJob(dataset, tmp_path / "straight", model_dir, champion, RESUMABLE), echo=None)

    killed: list[int] = []
    spawned: list[int] = []
    watcher = kill_at_first_checkpoint(tmp_path / "crashed" / "checkpoints", spawned, killed)
    watcher.start()
    progress = io.StringIO()
    job = TrainingJob(dataset, tmp_path / "crashed", model_dir, champion, RESUMABLE)
    resumed = run_training(job, on_spawn=spawned.append, echo=progress)
    watcher.join(timeout=10)

    assert killed == spawned[:1]
    assert len(spawned) == 2  # killed once, restarted once
    assert resumed.resumed_from_step in (2, 4)
    assert straight.resumed_from_step == 0
    assert digest(resumed.adapter_dir) == digest(straight.adapter_dir)
    assert resumed.loss_curve == straight.loss_curve
    assert (resumed.steps, resumed.tokens) == (6, straight.tokens)
    assert digest(champion) == before
    assert "training: 100%" in progress.getvalue()
    # the process trained at lower priority with one thread
    assert (straight.niceness, straight.threads) == (min(19, os.nice(0) + RESUMABLE.niceness), 1)
    assert json.loads((tmp_path / "crashed" / "result.json").read_text())["resumed_from_step"] in (2, 4)


def test_a_job_that_cannot_run_fails_at_once_and_leaves_no_adapter(
    model_dir: Path, champion: Path, tmp_path: Path
) -> None:
    dataset = tmp_path / "data.jsonl"
    dataset.write_text('{"id": "a", "messages": [], "completion": "x", "source": "confidence"}\n', encoding="utf-8")
    before = digest(champion)
    spawned: list[int] = []
    job = TrainingJob(dataset, tmp_path / "out", model_dir, champion, RESUMABLE)
    with pytest.raises(
        TrainingError, match=r"^training failed: dataset .*data.jsonl:1: messages must be a non-empty list$"
    ):
        run_training(job, on_spawn=spawned.append, echo=None)
    assert len(spawned) == 1  # bad input is not retried
    assert digest(champion) == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["job.json"]


# A stand-in for the worker: starts the trainer as run_training does, says its pid, then waits to be killed.
PARENT = """
import subprocess, sys, time
from pathlib import Path
from feedback.train_job import command, environment
child = subprocess.Popen(command(Path(sys.argv[1])), env=environment(1), stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie that no one reaped has exited too)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def test_a_trainer_stops_when_the_process_that_started_it_is_killed(model_dir: Path, tmp_path: Path) -> None:
    """A worker killed mid-refresh must not leave its trainer training on alone (the restarted worker resumes)."""
    endless = TINY.model_copy(update={"epochs": 100, "max_steps": 100_000, "checkpoint_every": 1})  # 200 steps
    job_file = tmp_path / "job.json"
    job_file.write_text(
        TrainingJob(write_dataset(tmp_path / "data.jsonl"), tmp_path / "out", model_dir, None, endless).to_json()
    )
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(job_file)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    trainer = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 120
        while not any((tmp_path / "out" / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not gone(trainer), "the trainer did not start training"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not gone(trainer) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(trainer), "the trainer went on after its parent was killed"
    finally:
        if not gone(trainer):
            os.kill(trainer, signal.SIGKILL)
        parent.stdout.close()
