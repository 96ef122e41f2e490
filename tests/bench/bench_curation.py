"""Curation of 1,000 catalogue examples on the default model: the pipeline, dedup and perplexity.

Data: 1,000 examples built from a fixed seed, questions and answers about a synthetic product
catalogue of about 100-150 tokens each (chat template included), where every fifth example is a
near-duplicate of an earlier one (one word changed).

Competitors, each warmed up once, then timed in turn within each of 3 repeats (so load from other
processes hits all alike); the best and median wall time and the median per-repeat ratio print:
- dedup: MinHash LSH candidates + exact Jaccard check (``drop_near_duplicates``) against exact
  all-pairs Jaccard on the same shingles (the same examples must survive both);
- perplexity: ``prompt_perplexities`` batched (4 and 8 prompts per pass) against one prompt per
  pass, on 16 prompts;
- pipeline: ``curate`` over the 1,000 examples without the perplexity stage, and with it on the
  first 50 prompts (``perplexity_max_examples``).
"""

from __future__ import annotations

import os
import platform
import random
import statistics
from collections.abc import Callable, Sequence

import torch
from interleave import interleaved

from feedback.curation import curate, drop_near_duplicates, jaccard, prompt_perplexities, shingles
from feedback.examples import Example
from feedback.model.runtime import ModelRuntime
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import CurationSettings, ModelSettings

REPEATS = 3
N_EXAMPLES = 1000
PRODUCTS = ["Aurora lamp", "Borealis desk", "Cirrus chair", "Delta shelf", "Ember kettle", "Fjord rug"]
COLOURS = ["oak", "walnut", "white", "black", "sage", "sand", "slate", "amber"]


def catalogue(n: int, seed: int = 7) -> list[Example]:
    """``n`` examples; every fifth repeats an earlier one with one word changed."""
    rng = random.Random(seed)
    examples: list[Example] = []
    for i in range(n):
        if i % 5 == 4:
            source = examples[rng.randrange(len(examples))]
            examples.append(Example(f"ex-{i}", source.messages, source.completion + " Thanks", "confidence"))
            continue
        product, colour = rng.choice(PRODUCTS), rng.choice(COLOURS)
        price, days, weight = rng.randint(20, 900), rng.randint(1, 14), rng.randint(2, 60)
        question = (
            f"Hello, I am looking at the {product} in {colour} for my flat. How much does it cost, how long "
            f"does delivery take to my city, and can I return it if the colour does not fit? Order {i}."
        )
        answer = (
            f"The {product} in {colour} costs {price} dollars. It weighs {weight} kilos and ships within {days} "
            f"days. You can return it unused within 30 days for a full refund; the return label is free."
        )
        examples.append(Example(f"ex-{i}", ({"role": "user", "content": question},), answer, "confidence"))
    return examples


def exact_all_pairs(examples: Sequence[Example], settings: CurationSettings) -> list[Example]:
    """The reference dedup: every example against every kept one, exact Jaccard."""
    kept: list[Example] = []
    kept_shingles: list[frozenset[str]] = []
    for example in examples:
        grams = shingles(example.text, settings.shingle_words)
        if any(jaccard(grams, other) >= settings.dedup_threshold for other in kept_shingles):
            continue
        kept.append(example)
        kept_shingles.append(grams)
    return kept


def measure(competitors: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Warm each up once, then time them in turn within each repeat (wall seconds)."""
    return interleaved(competitors, REPEATS)[0]


def report(title: str, times: dict[str, list[float]], baseline: str) -> None:
    print(f"-- {title} (ratio: median per-repeat time / {baseline})")
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, times[baseline], strict=True)]
        print(
            f"{name:>28}: best {min(values):8.3f} s  median {statistics.median(values):8.3f} s  "
            f"ratio {statistics.median(ratios):6.3f}"
        )


def main() -> None:
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}"
    )
    runtime = ModelRuntime.load(prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir))
    examples = catalogue(N_EXAMPLES)
    settings = CurationSettings()
    kept, _ = drop_near_duplicates(examples, settings)
    if [e.id for e in kept] != [e.id for e in exact_all_pairs(examples, settings)]:
        raise SystemExit("MinHash dedup and exact all-pairs dedup disagree")
    print(f"dedup keeps {len(kept)} of {len(examples)} (both methods agree)")
    report(
        "near-duplicates, 1,000 examples",
        measure(
            {
                "exact all pairs": lambda: exact_all_pairs(examples, settings),
                "minhash lsh + exact check": lambda: drop_near_duplicates(examples, settings),
            }
        ),
        "exact all pairs",
    )
    prompts = [e.prompt_text for e in examples[:16]]
    report(
        "prompt perplexity, 16 prompts",
        measure(
            {
                f"batch {size}": (lambda size=size: prompt_perplexities(runtime, prompts, batch_size=size))
                for size in (1, 4, 8)
            }
        ),
        "batch 1",
    )
    with_perplexity = CurationSettings(perplexity_enabled=True, perplexity_max_examples=50)
    times = measure(
        {
            "curate": lambda: curate(examples, runtime, settings),
            "curate + perplexity of 50": lambda: curate(examples, runtime, with_perplexity),
        }
    )
    report("pipeline, 1,000 examples", times, "curate")
    result = curate(examples, runtime, with_perplexity)
    for stage in result.stages:
        print(f"{stage.name:>16}: {stage.examples_in:5d} -> {stage.examples_out:5d} in {stage.seconds:7.3f} s")


if __name__ == "__main__":
    main()
