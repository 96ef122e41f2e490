"""Data-parallel training (torchrun, ``feedback.distributed``) on the CPU: two processes train what one does.

Two Gloo processes taking 2 examples each per step must train the adapter that one process trains
on the same global batches of 4: the same steps, tokens and losses, the same weights up to float
rounding (the two sum their halves in another order). A process that trained on the wrong share,
or gradients that were not averaged, would give other losses and other weights. On GPUs the same code runs with NCCL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_data import TINY, write_dataset

from feedback.distributed import Group, processes_for
from feedback.train_job import command, run_training
from feedback.training import TrainingJob

ON_CPU = TINY.model_copy(
    update={"precision": "fp32", "attention": "eager", "device": "cpu", "epochs": 2, "max_steps": 3}
)


def test_two_processes_train_the_adapter_one_trains_on_their_global_batches(model_dir: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl", n=8)
    alone = ON_CPU.model_copy(update={"batch_size": 4, "processes": 1})
    paired = ON_CPU.model_copy(update={"batch_size": 2, "processes": 2})
    one = run_training(TrainingJob(dataset, tmp_path / "one", model_dir, settings=alone), echo=None)
    two = run_training(TrainingJob(dataset, tmp_path / "two", model_dir, settings=paired), echo=None)
    assert (one.processes, two.processes) == (1, 2)
    assert (one.steps, two.steps) == (3, 3)
    assert (two.tokens, two.completion_tokens) == (one.tokens, one.completion_tokens)
    assert two.loss_curve == pytest.approx(one.loss_curve, rel=1e-5)
    weights_one = load_file(one.adapter_dir / "adapter_model.safetensors")
    weights_two = load_file(two.adapter_dir / "adapter_model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name, tensor in weights_one.items():
        # Adam divides by the root of the second moment: where a gradient is nearly zero its sign, so a rounding,
        # decides the step, and single weights may differ by up to the learning rate; the tensors as a whole agree
        assert float((weights_two[name] - tensor).norm() / tensor.norm()) < 1e-3, name
    assert any(name.endswith("lora_B.weight") and tensor.abs().max() > 0 for name, tensor in weights_one.items())


def test_each_process_takes_its_contiguous_share_of_a_global_batch() -> None:
    batch = [7, 3, 5, 1, 2]
    assert [Group(rank, 2).share(batch) for rank in range(2)] == [[7, 3, 5], [1, 2]]
    assert [Group(rank, 3).share(batch) for rank in range(3)] == [[7, 3], [5, 1], [2]]
    assert Group().share(batch) == batch
    assert Group().totals(2.5, 3.0) == [2.5, 3.0]
    assert (Group(1, 2, 1).device("cuda"), Group(1, 2, 1).device("cpu")) == ("cuda:1", "cpu")


def test_several_processes_start_under_torchrun(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    assert command(job, 1)[1:] == ["-m", "feedback.train_job", str(job)]
    assert command(job, 2)[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "feedback.train_job",
        str(job),
    ]
    assert (processes_for(3, "cpu"), processes_for(0, "cpu")) == (3, 1)
    assert processes_for(0, "cuda") == max(1, torch.cuda.device_count())
