"""Generation throughput: the model runtime (which also records raw log-probabilities and
confidence) against plain transformers ``generate`` on the same model, prompts and settings.

Greedy, fixed prompt set, batch 1 and batch 16; each side runs once to warm up, then is timed.
Prints tokens/s for both and the runtime's cost as a ratio.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch

from feedback.model.runtime import ModelRuntime, SamplingParams
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import ModelSettings

NEW_TOKENS = 32
PROMPTS = [
    f"Question {i}: explain in a few sentences why {topic} matters."
    for i, topic in enumerate(["sleep", "water", "exercise", "reading", "music", "friends", "maths", "history"] * 2)
]


def plain_generate(runtime: ModelRuntime, prompts: list[list[int]]) -> None:
    """transformers ``generate`` with no logits kept (the same greedy tokens as the runtime's)."""
    width = max(map(len, prompts))
    pad = runtime.tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        runtime.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad
        )


def timed(fn: Any) -> tuple[float, Any]:
    fn()  # warm-up
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    threads = torch.get_num_threads()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads {threads}")
    runtime = ModelRuntime.load(prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir))
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0)
    print(f"model: {runtime.name}, greedy, {NEW_TOKENS} new tokens\n")
    print(f"{'batch':>5} {'plain generate tok/s':>22} {'runtime tok/s':>14} {'runtime / plain':>16}")
    for batch in (1, 16):
        plain_rate, ours_rate = measure(runtime, batch, params)
        print(f"{batch:>5} {plain_rate:>22.1f} {ours_rate:>14.1f} {ours_rate / plain_rate:>16.2f}")


def measure(runtime: ModelRuntime, batch: int, params: SamplingParams) -> tuple[float, float]:
    """Tokens/s of plain generate and of the runtime for one batch size."""
    messages = [[{"role": "user", "content": p}] for p in PROMPTS[:batch]]
    rendered = [runtime.render_prompt(m) for m in messages]
    plain_s, _ = timed(lambda: plain_generate(runtime, rendered))
    # both generate the same greedy tokens; count them once, as the runtime reports them
    ours_s, tokens = timed(
        lambda: sum(g.completion_tokens for g in runtime.generate_batch([(m, params) for m in messages]))
    )
    return tokens / plain_s, tokens / ours_s


if __name__ == "__main__":
    main()
