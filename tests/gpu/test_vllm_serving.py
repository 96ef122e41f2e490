"""The vLLM backend against the transformers backend on one GPU: answers, confidence, streaming, hot loads.

vLLM computes in bfloat16 (its LoRA kernels take 16-bit activations only) and the reference in
float32, so numbers agree within bfloat16 rounding, and greedy answers agree token for token except
where the reference itself finds the two candidates for a token all but tied. Measured differences
are recorded as test-suite properties (``--junitxml`` keeps them).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from feedback.deployments import join_version
from feedback.events import ChatMessage, Role
from feedback.model.runtime import Generation, ModelRuntime, SamplingParams
from services.gateway import vllm_backend
from services.gateway.backend import GenerationRequest, TransformersBackend
from services.gateway.metrics import GatewayMetrics

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not vllm_backend.available(), reason="needs a CUDA GPU and vLLM (infra/gpu/install.sh)"),
    # vLLM 0.20's engine client leaves its zmq context to the garbage collector after shutdown (which closes it)
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function Context.__del__:pytest.PytestUnraisableExceptionWarning"
    ),
]

Score = Callable[[str | None, Sequence[int], Sequence[int]], tuple[float, ...]]
Record = Callable[[str, object], None]

BASE = "smollm2-135m-instruct"
PROMPTS = (
    (ChatMessage(role="user", content="What is the capital of France?"),),
    (ChatMessage(role="user", content="Write a long story about a dragon who learns to cook."),),
    (
        ChatMessage(role="system", content="You answer in one short sentence."),
        ChatMessage(role="user", content="Why is the sky blue?"),
    ),
)
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)
SAMPLED = SamplingParams(max_tokens=24, temperature=0.7, top_p=0.9, seed=11)
# bfloat16 keeps 8 significant bits of every activation and logit: the largest difference of one token's
# log-probability from the float32 reference, nats (the contract suite uses the same bound)
TOKEN_TOLERANCE = 0.25
# ... and of their mean, which confidence is exp of (5% of the confidence)
MEAN_TOLERANCE = 0.05
# two candidates closer than this under the reference are a tie that bfloat16 rounding may break either way
TIE = 2 * TOKEN_TOLERANCE


def ask(
    messages: tuple[ChatMessage, ...], version: str, params: SamplingParams = GREEDY, **kw: object
) -> GenerationRequest:
    return GenerationRequest(messages, params, version, **kw)  # type: ignore[arg-type]


def versions(adapters: dict[str, str]) -> list[tuple[str, str | None]]:
    """(model version, adapter) for the base model and each adapter."""
    return [(BASE, None), *((join_version(BASE, a), a) for a in adapters.values())]


def prompt_ids(runtime: ModelRuntime, messages: tuple[ChatMessage, ...]) -> list[int]:
    return runtime.render_prompt([m.model_dump() for m in messages])


def first_difference(want: Sequence[int], got: Sequence[int]) -> int | None:
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            return i
    return None if len(want) == len(got) else min(len(want), len(got))


def tie_gap(score: Score, adapter: str | None, prompt: Sequence[int], want: Sequence[int], got: Sequence[int]) -> float:
    """How much more likely the reference's greedy token is than vLLM's where they first differ, nats."""
    i = first_difference(want, got)
    assert i is not None
    assert i < min(len(want), len(got)), "one answer stops where the other goes on"
    theirs = score(adapter, prompt, [*want[:i], got[i]])[-1]
    ours = score(adapter, prompt, want[: i + 1])[-1]
    return ours - theirs


def test_greedy_answers_match_the_transformers_backend(
    loop: asyncio.Runner,
    vllm: vllm_backend.VLLMBackend,
    transformers_gpu: TransformersBackend,
    reference: Score,
    runtime: ModelRuntime,
    adapters: dict[str, str],
    record_testsuite_property: Record,
) -> None:
    async def answers(version: str) -> list[tuple[Generation, Generation]]:
        return [
            (await transformers_gpu.generate(ask(m, version)), await vllm.generate(ask(m, version))) for m in PROMPTS
        ]

    identical, ties, gaps = 0, 0, []
    by_version = {}
    for version, adapter in versions(adapters):
        pairs = loop.run(answers(version))
        by_version[version] = [got.token_ids for _, got in pairs]
        for messages, (want, got) in zip(PROMPTS, pairs, strict=True):
            if want.token_ids == got.token_ids:
                identical += 1
                continue
            gap = tie_gap(reference, adapter, prompt_ids(runtime, messages), want.token_ids, got.token_ids)
            gaps.append(round(gap, 4))
            ties += gap < TIE
    record_testsuite_property("greedy_identical_answers", identical)
    record_testsuite_property("greedy_divergence_gaps", gaps)
    assert identical + ties == len(PROMPTS) * len(versions(adapters)), f"divergences beyond a tie, gaps {gaps}"
    # Each adapter changes the answers, so the engine really applies it.
    assert len({tuple(answers) for answers in by_version.values()}) == len(by_version)


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_confidence_is_the_transformers_number_for_the_same_tokens(
    loop: asyncio.Runner,
    vllm: vllm_backend.VLLMBackend,
    reference: Score,
    runtime: ModelRuntime,
    adapters: dict[str, str],
    params: SamplingParams,
    record_testsuite_property: Record,
) -> None:
    """Raw log-probabilities: at temperature 0.7 the processed ones would be off by far more than rounding."""
    worst_token, worst_mean = 0.0, 0.0
    for version, adapter in versions(adapters):
        for messages in PROMPTS:
            got = loop.run(vllm.generate(ask(messages, version, params)))
            scored = reference(adapter, prompt_ids(runtime, messages), got.token_ids)
            assert got.completion_tokens == len(got.token_ids) == len(got.token_logprobs) == len(scored)
            worst_token = max(worst_token, *(abs(a - b) for a, b in zip(got.token_logprobs, scored, strict=True)))
            mean = math.log(got.confidence) - sum(scored) / len(scored)
            worst_mean = max(worst_mean, abs(mean))
    name = "greedy" if params.temperature == 0 else "sampled"
    record_testsuite_property(f"{name}_max_token_logprob_difference", round(worst_token, 5))
    record_testsuite_property(f"{name}_max_mean_logprob_difference", round(worst_mean, 5))
    assert worst_token < TOKEN_TOLERANCE
    assert worst_mean < MEAN_TOLERANCE


def test_streaming_sends_the_text_as_it_grows(
    loop: asyncio.Runner, vllm: vllm_backend.VLLMBackend, adapters: dict[str, str]
) -> None:
    async def stream(version: str, params: SamplingParams) -> tuple[Generation, list[str]]:
        pieces: list[str] = []
        messages = PROMPTS[0] if params.stop else PROMPTS[1]
        generation = await vllm.generate(ask(messages, version, params, on_text=pieces.append))
        return generation, pieces

    for version, _ in versions(adapters):
        generation, pieces = loop.run(stream(version, SamplingParams(max_tokens=32, temperature=0.0)))
        assert "".join(pieces) == generation.text
        assert len(pieces) > 8  # token by token, not in one piece at the end
    stop = SamplingParams(max_tokens=12, temperature=0.0, stop=("France",))
    generation, pieces = loop.run(stream(BASE, stop))
    assert (generation.text, generation.finish_reason) == ("The capital of ", "stop")
    assert "".join(pieces) == "The capital of "


def test_a_new_adapter_hot_loads_under_load_without_failed_requests(
    loop: asyncio.Runner,
    vllm: vllm_backend.VLLMBackend,
    reference: Score,
    runtime: ModelRuntime,
    adapters: dict[str, str],
    new_adapter: Callable[[str, int], str],
    metrics: GatewayMetrics,
    record_testsuite_property: Record,
) -> None:
    """Every request succeeds, and every answer of the new version comes from the new adapter's weights.

    Which weights wrote an answer shows in its log-probabilities: they match the new adapter's reference
    and not the champion's. The answers alone cannot tell: for this prompt the new adapter's first token
    is a near tie (0.016 nats in float32 on the CPU) between its own answer and the champion's, which
    the batch shapes of one H100 run broke both ways.
    """
    fresh = new_adapter("third", 3)  # registered now: the engine has never seen it
    new, champion = join_version(BASE, fresh), join_version(BASE, adapters["first"])
    params = SamplingParams(max_tokens=16, temperature=0.0)

    async def body() -> tuple[list[BaseException], Counter[str], dict[tuple[int, ...], tuple[float, ...]]]:
        done, failures, counts = asyncio.Event(), list[BaseException](), Counter[str]()
        answers: dict[tuple[int, ...], tuple[float, ...]] = {}  # the new version's answers and their numbers

        async def client(version: str, role: Role) -> None:
            while not done.is_set():
                try:
                    generation = await vllm.generate(ask(PROMPTS[0], version, params, role=role))
                except Exception as exc:  # every failure counts: none may happen
                    failures.append(exc)
                    continue
                counts[f"{'new' if version == new else 'champion'}:{role}"] += 1
                if version == new:
                    answers[generation.token_ids] = generation.token_logprobs

        tasks = [asyncio.create_task(client(champion, "served")) for _ in range(48)]
        tasks += [asyncio.create_task(client(champion, "shadow")) for _ in range(4)]
        await asyncio.sleep(2.0)
        await vllm.load(new)  # fetched, verified and added while 52 clients keep the engine busy
        tasks += [asyncio.create_task(client(new, "served")) for _ in range(16)]
        await asyncio.sleep(3.0)
        done.set()
        await asyncio.gather(*tasks)
        return failures, counts, answers

    failures, counts, answers = loop.run(body())
    record_testsuite_property("hot_load_requests", dict(counts))
    assert failures == []
    assert min(counts["new:served"], counts["champion:served"], counts["champion:shadow"]) > 0
    prompt = prompt_ids(runtime, PROMPTS[0])
    for i, (ids, logprobs) in enumerate(answers.items()):
        own = max(abs(a - b) for a, b in zip(logprobs, reference(fresh, prompt, ids), strict=True))
        other = max(abs(a - b) for a, b in zip(logprobs, reference(adapters["first"], prompt, ids), strict=True))
        # how far each answer's numbers are from the new adapter's reference, and from the champion's, nats
        record_testsuite_property(f"hot_load_answer_{i}_own_vs_champion", (round(own, 4), round(other, 4)))
        assert own < TOKEN_TOLERANCE
        assert own < other
    assert _observed_batches_above(metrics, 16)


def _observed_batches_above(metrics: GatewayMetrics, rows: int) -> bool:
    """Whether some engine step ran more than ``rows`` requests at once (shared batches, not one by one)."""
    (histogram,) = metrics.batch_size.collect()
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    return bool(buckets["+Inf"] > buckets[str(float(rows))])
