"""LoRA training in process on the real default model: batching, loss, determinism, continuation, checkpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_data import TINY, digest, one_thread, write_dataset

from feedback.errors import ConfigError
from feedback.examples import Example, TokenizedExample, tokenize_examples
from feedback.model.runtime import ModelRuntime
from feedback.settings import TrainingSettings, load_settings
from feedback.train_data import collate, completion_loss
from feedback.training import (
    EAGER_MAX_TOKENS,
    TrainingError,
    TrainingJob,
    TrainingResult,
    batch_indices,
    resolve_attention,
    total_steps,
    train,
)

MESSAGES = [{"role": "user", "content": "How much is the lamp?"}]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_a_batch_is_right_padded_and_only_completion_tokens_are_targets() -> None:
    batch = collate([TokenizedExample((1, 2, 3), (4, 5, 9)), TokenizedExample((7, 8), (6, 9))], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 9], [7, 8, 6, 9, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    # position t predicts token t + 1
    assert batch.targets.tolist() == [[-100, -100, 4, 5, 9, -100], [-100, 6, 9, -100, -100, -100]]
    assert (batch.keep, batch.tokens, batch.completion_tokens) == (5, 10, 5)


def test_each_epoch_visits_every_example_once_in_a_seeded_order() -> None:
    settings = TrainingSettings(batch_size=2, epochs=3, seed=5)
    assert total_steps(5, settings) == 9
    assert total_steps(5, settings.model_copy(update={"max_steps": 4})) == 4
    for epoch in range(3):
        seen = [i for step in range(epoch * 3, epoch * 3 + 3) for i in batch_indices(step, 5, settings)]
        assert sorted(seen) == [0, 1, 2, 3, 4]
    assert [batch_indices(s, 5, settings) for s in range(9)] == [batch_indices(s, 5, settings) for s in range(9)]
    other_seed = settings.model_copy(update={"seed": 6})
    assert [batch_indices(s, 5, settings) for s in range(9)] != [batch_indices(s, 5, other_seed) for s in range(9)]


def test_the_loss_is_the_negative_mean_log_probability_that_scoring_reports(model_dir: Path) -> None:
    runtime = ModelRuntime.load(model_dir)
    long = [{"role": "user", "content": "Describe the desk in one sentence, please."}]
    examples = [(MESSAGES, "The lamp costs 12 dollars."), (long, "It is a wooden desk.")]
    scores = [runtime.score(messages, completion) for messages, completion in examples]
    tokenized = tokenize_examples(
        runtime, [Example(f"e{k}", tuple(m), c, "confidence") for k, (m, c) in enumerate(examples)]
    )
    assert [len(t.completion_ids) for t in tokenized] == [len(s) for s in scores]
    with torch.no_grad():
        alone, n_alone = completion_loss(runtime.model, collate(tokenized[:1], pad_id=0))
        padded, n_padded = completion_loss(runtime.model, collate(tokenized, pad_id=0))
    assert n_alone == len(scores[0])
    assert float(alone) / n_alone == pytest.approx(-sum(scores[0]) / len(scores[0]), abs=1e-5)
    # padding the shorter example changes nothing: the batch sum is the sum of both examples' sums
    assert n_padded == len(scores[0]) + len(scores[1])
    assert float(padded) == pytest.approx(-sum(scores[0]) - sum(scores[1]), abs=1e-3)


def test_same_data_and_seed_give_identical_adapter_bytes(model_dir: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    runs = [train(TrainingJob(dataset, tmp_path / name, model_dir, settings=TINY), progress=False) for name in "ab"]
    other = train(TrainingJob(dataset, tmp_path / "c", model_dir, settings=TINY.model_copy(update={"seed": 1})))
    assert digest(runs[0].adapter_dir) == digest(runs[1].adapter_dir)
    assert runs[0].loss_curve == runs[1].loss_curve
    assert digest(other.adapter_dir) != digest(runs[0].adapter_dir)
    result = runs[0]
    assert (result.steps, result.examples, result.resumed_from_step, result.device) == (2, 4, 0, "cpu")
    assert result.attention == "eager"  # "auto" on CPU with short examples
    assert len(result.loss_curve) == 2
    assert all(0 < loss < 20 for loss in result.loss_curve)
    assert result.tokens > result.completion_tokens > 0
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (4, 8, "smollm2-135m-instruct")
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # one checkpoint is kept: the final one, with the adapter and the resumable state
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["step-00000002"]
    state = torch.load(tmp_path / "a" / "checkpoints" / "step-00000002" / "state.pt", weights_only=True)
    assert (state["step"], state["loss_curve"]) == (2, list(result.loss_curve))
    assert json.loads((tmp_path / "a" / "result.json").read_text())["steps"] == 2


def test_training_continues_the_champion_adapter_and_leaves_it_untouched(model_dir: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    champion = train(TrainingJob(dataset, tmp_path / "champion", model_dir, settings=TINY), progress=False)
    before = digest(champion.adapter_dir)
    # a tiny learning rate: the continued adapter must still be the champion's, not a fresh LoRA (B = 0)
    settings = TINY.model_copy(update={"rank": 8, "learning_rate": 1e-9})
    child = train(TrainingJob(dataset, tmp_path / "child", model_dir, champion.adapter_dir, settings), progress=False)
    assert digest(champion.adapter_dir) == before
    parent_weights = load_file(champion.adapter_dir / "adapter_model.safetensors")
    child_weights = load_file(child.adapter_dir / "adapter_model.safetensors")
    assert sorted(child_weights) == sorted(parent_weights)
    for name, weight in child_weights.items():
        assert torch.allclose(weight, parent_weights[name], atol=1e-6), name
    lora_b = [w for name, w in child_weights.items() if "lora_B" in name]
    assert lora_b
    assert all(float(w.abs().max()) > 1e-4 for w in lora_b)
    assert json.loads((child.adapter_dir / "adapter_config.json").read_text())["r"] == 4  # the champion's rank


def test_a_checkpoint_of_another_job_is_refused(model_dir: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    train(TrainingJob(dataset, tmp_path / "out", model_dir, settings=TINY), progress=False)
    other = TrainingJob(dataset, tmp_path / "out", model_dir, settings=TINY.model_copy(update={"seed": 9}))
    with pytest.raises(TrainingError, match="belongs to a job with other data, settings or parent adapter"):
        train(other, progress=False)


GOOD = '{"id": "a", "messages": [{"role": "user", "content": "hi"}], "completion": "yo", "source": "confidence"}\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no examples"),
        (GOOD + "not json\n", r"data.jsonl:2: Expecting value"),
        (GOOD.replace('"yo"', '""'), r"example 1: the completion is empty"),
        (
            GOOD.replace(', "content": "hi"', ""),
            r"data.jsonl:1: messages\[0\] must be an object with exactly role and content",
        ),
    ],
)
def test_a_bad_dataset_is_refused_naming_the_problem(
    model_dir: Path, tmp_path: Path, content: str, message: str
) -> None:
    dataset = tmp_path / "data.jsonl"
    dataset.write_text(content, encoding="utf-8")
    with pytest.raises(TrainingError, match=message):
        train(TrainingJob(dataset, tmp_path / "out", model_dir, settings=TINY), progress=False)
    assert not (tmp_path / "out").exists()


def test_an_example_longer_than_the_context_is_refused(model_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "data.jsonl"
    row = {"id": "x", "messages": MESSAGES, "completion": "word " * 9000, "source": "confidence"}
    dataset.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(TrainingError, match=r"example 1 has \d+ tokens; the model reads at most 8192"):
        train(TrainingJob(dataset, tmp_path / "out", model_dir, settings=TINY), progress=False)


def test_a_corrupt_parent_adapter_is_refused_with_its_path(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}')
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    dataset = write_dataset(tmp_path / "data.jsonl")
    job = TrainingJob(dataset, tmp_path / "out", model_dir, broken, TINY)
    with pytest.raises(TrainingError, match=r"could not load the parent adapter '.*broken'"):
        train(job, progress=False)
    assert not (tmp_path / "out" / "adapter").exists()
    assert not (tmp_path / "out" / "result.json").exists()


def test_training_settings_are_validated_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"training\.rank: Input should be greater than or equal to 1 \(got 0\)"):
        load_settings(training={"rank": 0})
    with pytest.raises(ConfigError, match=r"training\.device: Input should be 'auto', 'cpu' or 'cuda'"):
        load_settings(training={"device": "tpu"})
    assert load_settings().training.checkpoint_every == 1000


def test_a_job_and_a_result_round_trip_through_json(tmp_path: Path) -> None:
    job = TrainingJob(tmp_path / "d.jsonl", tmp_path / "out", tmp_path / "model", None, TINY)
    assert TrainingJob.from_json(job.to_json()) == job
    result = TrainingResult(tmp_path / "a", 2, 4, 90, 30, (2.5, 1.25), 0, "cpu", 1, 10, 3.5)
    assert TrainingResult.from_json(result.to_json()) == result


@pytest.mark.parametrize(
    ("setting", "device", "longest", "expected"),
    [
        ("auto", "cpu", EAGER_MAX_TOKENS, "eager"),
        ("auto", "cpu", EAGER_MAX_TOKENS + 1, "sdpa"),  # eager keeps L x L attention weights a layer
        ("auto", "cuda", 10, "sdpa"),
        ("sdpa", "cpu", 10, "sdpa"),
        ("eager", "cuda", 4096, "eager"),
    ],
)
def test_attention_auto_is_eager_only_for_short_examples_on_cpu(
    setting: str, device: str, longest: int, expected: str
) -> None:
    assert resolve_attention(setting, device, longest) == expected


def test_the_attention_kernel_does_not_change_what_is_learned(model_dir: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    runs = {
        kernel: train(
            TrainingJob(dataset, tmp_path / kernel, model_dir, settings=TINY.model_copy(update={"attention": kernel})),
            progress=False,
        )
        for kernel in ("eager", "sdpa")
    }
    assert (runs["eager"].attention, runs["sdpa"].attention) == ("eager", "sdpa")
    # the same sums in another order: equal up to rounding (bf16 autocast where the CPU has it)
    assert runs["eager"].loss_curve == pytest.approx(runs["sdpa"].loss_curve, rel=2e-2)
    assert runs["eager"].loss_curve[0] != runs["eager"].loss_curve[1]  # it trained
