"""Continuous batching on the real default model: rows join and leave a running batch between steps."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from feedback.model.adapters import AdapterSet
from feedback.model.batch import BASE_ADAPTER, BatchRow, ContinuousBatch
from feedback.model.runtime import Generation, Messages, ModelRuntime, SamplingParams

FRANCE: Messages = [{"role": "user", "content": "What is the capital of France?"}]
STORY: Messages = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
COLOURS: Messages = [{"role": "user", "content": "Name three colours of the rainbow, please."}]


def greedy(max_tokens: int, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)  # type: ignore[arg-type]


def cached_width(batch: ContinuousBatch) -> int:
    # Each row's newest token is not in the cache yet; rows are right-aligned, padding trimmed.
    return max(len(row.prompt_ids) + len(row.ids) - 1 for row in batch.rows)


def test_greedy_rows_joining_and_leaving_get_the_tokens_they_get_alone(runtime: ModelRuntime) -> None:
    plan = [(STORY, greedy(24)), (FRANCE, greedy(8)), (COLOURS, greedy(12)), (FRANCE, greedy(3))]
    alone = [runtime.generate(messages, params) for messages, params in plan]
    done_at: dict[int, int] = {}
    step = 0

    def note(i: int) -> Callable[[Generation], None]:
        return lambda _: done_at.__setitem__(i, step)

    rows = [BatchRow(runtime.render_prompt(m), p, on_done=note(i)) for i, (m, p) in enumerate(plan)]
    joins = {0: [0], 3: [1, 2], 9: [3]}  # the step at which each row joins
    batch = ContinuousBatch(runtime)
    while step == 0 or batch.rows:
        batch.step([rows[i] for i in joins.get(step, [])])
        if batch.rows:
            assert batch.width == cached_width(batch)
        step += 1
    for row, expected in zip(rows, alone, strict=True):
        got = row.result
        assert got is not None
        assert (got.token_ids, got.text, got.finish_reason) == (
            expected.token_ids,
            expected.text,
            expected.finish_reason,
        )
        assert max(abs(a - b) for a, b in zip(got.token_logprobs, expected.token_logprobs, strict=True)) < 1e-4
    # Each row left in the step that made its last token, the short ones long before the story.
    joined = {i: s for s, members in joins.items() for i in members}
    assert done_at == {i: joined[i] + len(alone[i].token_ids) - 1 for i in range(4)}
    assert done_at[0] == 23 == step - 1


def test_a_finished_row_is_answered_while_the_batch_goes_on(runtime: ModelRuntime) -> None:
    answered: list[int] = []
    batch = ContinuousBatch(runtime)
    long = BatchRow(runtime.render_prompt(STORY), greedy(16))
    short = BatchRow(
        runtime.render_prompt(FRANCE), greedy(12, stop=("Paris",)), on_done=lambda _: answered.append(len(long.ids))
    )
    batch.step([long])
    batch.step([short])
    while short.result is None:
        batch.step()
    assert short.result.text == "The capital of France is "
    assert answered == [len(long.ids)]
    assert len(long.ids) < 16
    assert batch.rows == [long]
    while batch.rows:
        batch.step()
    assert len(long.ids) == 16


def test_a_cancelled_row_leaves_at_the_next_step(runtime: ModelRuntime) -> None:
    batch = ContinuousBatch(runtime)
    rows = [BatchRow(runtime.render_prompt(STORY), greedy(30)), BatchRow(runtime.render_prompt(FRANCE), greedy(30))]
    batch.step(rows)
    batch.step()
    rows[0].cancelled = True
    finished = batch.step()
    assert finished == [rows[0]]
    assert batch.rows == [rows[1]]
    assert rows[0].result is not None
    assert rows[0].result.completion_tokens == 2
    assert batch.width == cached_width(batch)
    assert batch.reset() == [rows[1]]
    assert batch.rows == []


def test_a_seeded_row_is_reproducible_whatever_joins_its_batch(runtime: ModelRuntime) -> None:
    seeded = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, seed=11)

    def run(joins: dict[int, list[BatchRow]]) -> Generation:
        mine = BatchRow(runtime.render_prompt(STORY), seeded)
        batch, step = ContinuousBatch(runtime), 0
        batch.step([*joins.get(0, []), mine])
        while mine.result is None:
            step += 1
            batch.step(joins.get(step, []))
        return mine.result

    crowded = run(
        {
            0: [BatchRow(runtime.render_prompt(FRANCE), SamplingParams(max_tokens=20, temperature=1.0))],
            2: [BatchRow(runtime.render_prompt(COLOURS), SamplingParams(max_tokens=2, temperature=1.0))],
        }
    )
    assert crowded.token_ids == run({}).token_ids


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    fresh = ModelRuntime.load(model_dir)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora-continuous")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        get_peft_model(fresh.model, config).save_pretrained(str(out))
    return out


def run_alone(runtime: ModelRuntime, adapters: AdapterSet, row: BatchRow) -> Generation:
    batch = ContinuousBatch(runtime, lambda: adapters.model)
    batch.step([row])
    while batch.rows:
        batch.step()
    assert row.result is not None
    return row.result


def test_adapter_rows_join_a_running_batch_and_adapters_load_between_steps(model_dir: Path, adapter_dir: Path) -> None:
    runtime = ModelRuntime.load(model_dir)  # adapters change the model in place: a runtime of our own
    expected_base = runtime.generate(STORY, greedy(14))  # before any adapter wraps the model
    expected_plain = runtime.generate(FRANCE, greedy(6))
    adapters = AdapterSet(runtime)
    base = BatchRow(runtime.render_prompt(STORY), greedy(14))
    batch = ContinuousBatch(runtime, lambda: adapters.model)
    batch.step([base])
    batch.step()
    adapters.load("one", adapter_dir)  # between two steps of a running batch
    tuned = BatchRow(runtime.render_prompt(FRANCE), greedy(6), adapter="one")
    plain = BatchRow(runtime.render_prompt(FRANCE), greedy(6), adapter=BASE_ADAPTER)
    batch.step([tuned, plain])
    while batch.rows:
        batch.step()
    expected_tuned = run_alone(runtime, adapters, BatchRow(runtime.render_prompt(FRANCE), greedy(6), adapter="one"))
    assert base.result is not None
    assert base.result.token_ids == expected_base.token_ids
    assert tuned.result is not None
    assert tuned.result.token_ids == expected_tuned.token_ids
    assert plain.result is not None
    assert plain.result.token_ids == expected_plain.token_ids
    assert tuned.result.token_ids != plain.result.token_ids


def test_rows_naming_adapters_need_an_adapter_model(runtime: ModelRuntime) -> None:
    batch = ContinuousBatch(runtime)
    running = BatchRow(runtime.render_prompt(FRANCE), greedy(10))
    batch.step([running])
    with pytest.raises(ValueError, match="rows name adapters but no adapter model was given"):
        batch.step([BatchRow(runtime.render_prompt(FRANCE), greedy(4), adapter="one")])
    assert batch.rows == []
    assert batch.width == 0
