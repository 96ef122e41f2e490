"""Generation and scoring with the real default model (small token budgets keep it quick)."""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch

from feedback.model.runtime import Generation, Messages, ModelRuntime, SamplingParams

FRANCE: Messages = [{"role": "user", "content": "What is the capital of France?"}]
STORY: Messages = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
COLOURS: Messages = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Name three colours."},
]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def france(runtime: ModelRuntime) -> Generation:
    return runtime.generate(FRANCE, GREEDY)


def assert_same_numbers(got: tuple[float, ...], expected: tuple[float, ...], tol: float = 1e-4) -> None:
    assert len(got) == len(expected)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= tol


def test_runtime_is_named_after_the_default_model(runtime: ModelRuntime) -> None:
    assert runtime.name == "smollm2-135m-instruct"
    assert not runtime.model.training


def test_prompt_uses_the_chat_template(runtime: ModelRuntime) -> None:
    text = str(runtime.tokenizer.decode(runtime.render_prompt(FRANCE)))
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_greedy_answer_is_text_and_deterministic(runtime: ModelRuntime, france: Generation) -> None:
    assert "Paris" in france.text
    assert france.finish_reason == "stop"  # ended by EOS within the budget
    assert france.prompt_tokens == len(runtime.render_prompt(FRANCE))
    assert runtime.generate(FRANCE, GREEDY) == france


def test_confidence_is_exp_mean_raw_logprob(france: Generation) -> None:
    assert france.completion_tokens == len(france.token_logprobs) == len(france.token_ids)
    assert france.confidence == math.exp(statistics.fmean(france.token_logprobs))
    assert 0.0 < france.confidence <= 1.0
    assert france.token_ids[-1] == 2  # the end-of-turn token is counted


def test_logprobs_match_a_teacher_forced_pass(runtime: ModelRuntime, france: Generation) -> None:
    scored = runtime.score_tokens(runtime.render_prompt(FRANCE), france.token_ids)
    assert_same_numbers(scored, france.token_logprobs)
    assert math.exp(statistics.fmean(scored)) == pytest.approx(france.confidence, abs=1e-4)


def test_score_of_the_text_reproduces_generation(runtime: ModelRuntime, france: Generation) -> None:
    retokenized = runtime.tokenizer(france.text, add_special_tokens=False)["input_ids"]
    assert (*retokenized, 2) == france.token_ids  # re-tokenization is stable for this answer
    assert_same_numbers(runtime.score(FRANCE, france.text), france.token_logprobs)


def test_batched_scores_equal_each_pair_scored_alone(runtime: ModelRuntime) -> None:
    pairs = [
        (FRANCE, "Paris."),
        (STORY, "Once upon a time there was a small robot who wanted to see the sea."),
        (FRANCE, "The capital of France is Paris, on the Seine."),
    ]
    batched = runtime.score_batch(pairs, batch_size=2)  # a full batch of two lengths, then one alone
    assert [len(scores) for scores in batched] == [len(runtime.score(m, c)) for m, c in pairs]
    for (messages, completion), scores in zip(pairs, batched, strict=True):
        assert_same_numbers(scores, runtime.score(messages, completion))
    no_eos = runtime.score_batch(pairs[:1], add_eos=False)[0]
    assert_same_numbers(no_eos, runtime.score(FRANCE, "Paris.", add_eos=False))


def test_sampled_logprobs_are_raw_not_tempered(runtime: ModelRuntime) -> None:
    sampled = runtime.generate(STORY, SamplingParams(max_tokens=8, temperature=1.7, top_p=0.9, seed=7))
    scored = runtime.score_tokens(runtime.render_prompt(STORY), sampled.token_ids)
    assert_same_numbers(scored, sampled.token_logprobs)


def test_seed_makes_sampling_reproducible_and_leaves_global_rng_alone(runtime: ModelRuntime) -> None:
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=1234)
    rng_before = torch.random.get_rng_state()
    first = runtime.generate(STORY, params)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert runtime.generate(STORY, params) == first
    assert runtime.generate(STORY, SamplingParams(max_tokens=10, temperature=1.0, seed=99)).text != first.text


def test_max_tokens_ends_with_length(runtime: ModelRuntime) -> None:
    cut = runtime.generate(STORY, SamplingParams(max_tokens=5, temperature=0.0))
    assert cut.finish_reason == "length"
    assert cut.completion_tokens == len(cut.token_logprobs) == 5
    assert cut.text


def test_stop_string_cuts_text_and_counts_up_to_its_last_token(runtime: ModelRuntime, france: Generation) -> None:
    stopped = runtime.generate(FRANCE, SamplingParams(max_tokens=12, temperature=0.0, stop=("Par",)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == france.text[: france.text.index("Par")]
    # "Par" ends inside the token " Paris", which is the last token counted.
    n = stopped.completion_tokens
    assert n < france.completion_tokens
    assert str(runtime.tokenizer.decode(list(stopped.token_ids[-1:]))).strip() == "Paris"
    assert stopped.token_ids == france.token_ids[:n]
    assert_same_numbers(stopped.token_logprobs, france.token_logprobs[:n], tol=1e-5)
    assert stopped.confidence == math.exp(statistics.fmean(stopped.token_logprobs))


def test_batch_matches_one_by_one(runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_generate_calls(runtime, monkeypatch)
    prompts = [FRANCE, STORY, COLOURS]
    batch = runtime.generate_batch([(messages, GREEDY) for messages in prompts])
    assert len(calls) == 1  # one padded batch for requests sharing their parameters
    assert len({g.prompt_tokens for g in batch}) == 3  # different lengths, so padding is exercised
    single = [runtime.generate(messages, GREEDY) for messages in prompts]
    for got, expected in zip(batch, single, strict=True):
        assert got.text == expected.text
        assert got.token_ids == expected.token_ids
        assert got.finish_reason == expected.finish_reason
        assert got.confidence == pytest.approx(expected.confidence, abs=1e-4)
        assert_same_numbers(got.token_logprobs, expected.token_logprobs)
    assert batch[0].completion_tokens < GREEDY.max_tokens  # its padded tail was left out


def test_batch_with_mixed_parameters_keeps_order(runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    short = SamplingParams(max_tokens=3, temperature=0.0)
    calls = count_generate_calls(runtime, monkeypatch)
    batch = runtime.generate_batch([(STORY, short), (COLOURS, GREEDY), (FRANCE, short)])
    assert len(calls) == 2
    assert [g.completion_tokens for g in batch][0::2] == [3, 3]
    assert batch[1].text == runtime.generate(COLOURS, GREEDY).text


def test_concurrent_callers_are_serialized(runtime: ModelRuntime) -> None:
    params = SamplingParams(max_tokens=6, temperature=0.0)
    expected = runtime.generate(COLOURS, params)
    results: list[Generation] = []
    threads = [threading.Thread(target=lambda: results.append(runtime.generate(COLOURS, params))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 3


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", 0), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("stop", ("",))],
)
def test_sampling_params_name_the_bad_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field if field != "stop" else "stop strings"):
        SamplingParams(**{field: value})


def test_unknown_dtype_is_refused(model_dir: Any) -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        ModelRuntime.load(model_dir, dtype="float8")


def count_generate_calls(runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the model's ``generate`` and record the batch size of each call."""
    calls: list[int] = []
    original = cast(Callable[..., Any], runtime.model.generate)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(runtime.model, "generate", counting)
    return calls
