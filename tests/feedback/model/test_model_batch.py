"""Mixed batches on the real default model: per-row sampling, stops, streaming and LoRA adapters."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from feedback.model.adapters import AdapterSet
from feedback.model.batch import BASE_ADAPTER, BatchRow, generate_mixed
from feedback.model.runtime import Generation, Messages, ModelRuntime, SamplingParams

FRANCE: Messages = [{"role": "user", "content": "What is the capital of France?"}]
STORY: Messages = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


def assert_same(got: Generation, expected: Generation, tol: float = 1e-4) -> None:
    assert (got.text, got.token_ids, got.finish_reason, got.prompt_tokens) == (
        expected.text,
        expected.token_ids,
        expected.finish_reason,
        expected.prompt_tokens,
    )
    assert max(abs(a - b) for a, b in zip(got.token_logprobs, expected.token_logprobs, strict=True)) <= tol
    assert abs(got.confidence - expected.confidence) <= tol


def test_rows_with_different_budgets_and_stops_match_single_runs(runtime: ModelRuntime) -> None:
    params = [
        SamplingParams(max_tokens=12, temperature=0.0),
        SamplingParams(max_tokens=4, temperature=0.0),
        SamplingParams(max_tokens=16, temperature=0.0, stop=(" time",)),
    ]
    prompts = [FRANCE, STORY, STORY]
    rows = [BatchRow(runtime.render_prompt(m), p) for m, p in zip(prompts, params, strict=True)]
    mixed = generate_mixed(runtime, rows)
    for got, messages, p in zip(mixed, prompts, params, strict=True):
        assert_same(got, runtime.generate(messages, p))
    assert [g.finish_reason for g in mixed] == ["stop", "length", "stop"]
    assert mixed[2].text == "Once upon a"


def test_a_seeded_row_does_not_depend_on_its_batch(runtime: ModelRuntime) -> None:
    seeded = SamplingParams(max_tokens=6, temperature=0.9, top_p=0.9, seed=11)
    alone = generate_mixed(runtime, [BatchRow(runtime.render_prompt(STORY), seeded)])[0]
    others = [BatchRow(runtime.render_prompt(FRANCE), SamplingParams(max_tokens=3, temperature=1.0))]
    together = generate_mixed(runtime, [*others, BatchRow(runtime.render_prompt(STORY), seeded)])[1]
    assert (together.text, together.token_ids) == (alone.text, alone.token_ids)


def test_text_streams_piece_by_piece_and_short_rows_finish_first(runtime: ModelRuntime) -> None:
    pieces: list[str] = []
    finished: list[int] = []
    rows = [
        BatchRow(
            runtime.render_prompt(FRANCE),
            SamplingParams(max_tokens=12, temperature=0.0, stop=("Paris",)),
            on_text=pieces.append,
            on_done=lambda g: finished.append(0),
        ),
        BatchRow(
            runtime.render_prompt(STORY),
            SamplingParams(max_tokens=10, temperature=0.0),
            on_done=lambda g: finished.append(1),
        ),
    ]
    first, _ = generate_mixed(runtime, rows)
    assert first.text == "The capital of France is "
    assert "".join(pieces) == first.text
    assert len(pieces) >= 4
    assert finished == [0, 1]


@pytest.fixture(scope="module")
def adapter_dirs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    dirs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        fresh = ModelRuntime.load(model_dir)
        config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        out = tmp_path_factory.mktemp(f"lora-{seed}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            get_peft_model(fresh.model, config).save_pretrained(out)
        dirs.append(out)
    return dirs


def test_one_batch_serves_the_base_and_two_adapters(model_dir: Path, adapter_dirs: list[Path]) -> None:
    runtime = ModelRuntime.load(model_dir)  # adapters change the model in place: a runtime of our own
    base_alone = runtime.generate(FRANCE, SamplingParams(max_tokens=8, temperature=0.0))
    adapters = AdapterSet(runtime)
    adapters.load("one", adapter_dirs[0])
    greedy = SamplingParams(max_tokens=8, temperature=0.0)

    def run(names: list[str]) -> list[Generation]:
        rows = [BatchRow(runtime.render_prompt(FRANCE), greedy, adapter=name) for name in names]
        return generate_mixed(runtime, rows, adapters.model)

    [one_alone] = run(["one"])
    adapters.load("two", adapter_dirs[1])  # hot-loaded next to the first
    [two_alone] = run(["two"])
    base, one, two = run([BASE_ADAPTER, "one", "two"])
    assert_same(base, base_alone)
    assert_same(one, one_alone, tol=1e-3)
    assert_same(two, two_alone, tol=1e-3)
    assert len({base.token_ids, one.token_ids, two.token_ids}) == 3
    assert "one" in adapters
    assert "three" not in adapters


def test_an_adapter_loads_while_a_batch_is_in_flight(model_dir: Path, adapter_dirs: list[Path]) -> None:
    runtime = ModelRuntime.load(model_dir)
    adapters = AdapterSet(runtime)
    adapters.load("one", adapter_dirs[0])
    greedy = SamplingParams(max_tokens=10, temperature=0.0)
    expected = generate_mixed(runtime, [BatchRow(runtime.render_prompt(STORY), greedy)], adapters.model)[0]
    started = threading.Event()
    results: list[Generation] = []

    def in_flight() -> None:
        row = BatchRow(runtime.render_prompt(STORY), greedy, on_text=lambda _: started.set())
        results.extend(generate_mixed(runtime, [row], adapters.model))

    worker = threading.Thread(target=in_flight)
    worker.start()
    assert started.wait(60)
    adapters.load("two", adapter_dirs[1])  # waits for the batch's step loop, then loads
    worker.join(60)
    assert_same(results[0], expected)
    assert "two" in adapters
