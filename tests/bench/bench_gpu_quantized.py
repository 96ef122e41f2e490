"""Quantized serving on the GPU: the champion's weights in fp8 against bf16 in vLLM, accuracy and speed.

Each side is a raw vLLM engine (the backend's engine arguments, ``quantization`` aside) in a
process of its own, one after the other on the same GPU, in the same run. Accuracy: greedy answers
(64 tokens at most) to the frozen catalogue golden set and to 400 more catalogue questions from
other catalogues, judged by ``feedback.catalogue.correct`` (the demo's judge); the paired change is
tested with an exact McNemar test. Speed: generated tokens/s of the serving benchmark's prompts,
all at once, after a warm-up, median of ``BENCH_REPEATS`` (default 3) runs.

    infra/gpu/install.sh bench WHEELS bench_gpu_quantized.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench_gpu_serving import (
    CHILD,
    MAX_TOKENS,
    N_REQUESTS,
    engine_settings,
    greedy,
    in_child,
    machine,
    raw_engine,
    requests,
    timed_generation,
)
from scipy.stats import binomtest

from evaluation.gate import GOLDEN_PATH
from feedback.catalogue import build_catalogue, correct, make_questions, parse_question
from feedback.examples import read_examples
from feedback.model.runtime import render_chat
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import ModelSettings

HELD_OUT_SEED = 20261207  # catalogues of their own, not the golden set's nor the demo's
SIDES = ("none", "fp8")


def questions() -> list[list[dict[str, str]]]:
    """The golden set's prompts, then 400 more catalogue questions."""
    golden = [[dict(m) for m in e.messages] for e in read_examples(GOLDEN_PATH)]
    more = [
        [dict(m) for m in q.messages]
        for seed in range(HELD_OUT_SEED, HELD_OUT_SEED + 4)
        for q in make_questions(build_catalogue(seed), seed, 100)
    ]
    return golden + more


def child(model_dir: Path, quantization: str, out: Path) -> None:
    """In a process of its own: answers and timing of one engine, written to ``out`` as JSON."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    asked = [{"prompt_token_ids": render_chat(tokenizer, messages)} for messages in questions()]
    prompts = [{"prompt_token_ids": render_chat(tokenizer, r["messages"])} for r in requests(N_REQUESTS)]
    llm = raw_engine(model_dir, quantization)
    answers = [o.outputs[0].text for o in llm.generate(asked, greedy(), use_tqdm=False)]
    out.write_text(json.dumps({"answers": answers} | timed_generation(llm, prompts)))


def run_side(model_dir: Path, quantization: str) -> dict[str, Any]:
    result: dict[str, Any] = in_child(__file__, "side", str(model_dir), quantization)
    return result


def main(argv: list[str]) -> None:
    if argv[:2] == [CHILD, "side"]:
        child(Path(argv[2]), argv[3], Path(argv[4]))
        return
    import torch

    print(f"{machine()}, {torch.cuda.get_device_name()}, torch {torch.__version__}, eager {engine_settings()}")
    model_dir = prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)
    asked = [parse_question(messages) for messages in questions()]
    if any(q is None for q in asked):
        raise RuntimeError("a catalogue question could not be parsed back")
    results = {side: run_side(model_dir, side) for side in SIDES}
    right = {side: [correct(q, a) for q, a in zip(asked, results[side]["answers"], strict=True)] for side in SIDES}
    rates = {side: results[side]["tokens"] / statistics.median(results[side]["seconds"]) for side in SIDES}
    n = len(asked)
    print(f"{model_dir.name}: {n} catalogue questions (40 golden), greedy, {MAX_TOKENS} tokens at most")
    print(f"  {'weights':>8} {'accuracy':>9} {'tok/s':>9}")
    for side in SIDES:
        print(f"  {'bf16' if side == 'none' else side:>8} {sum(right[side]) / n:>9.1%} {rates[side]:>9.1f}")
    lost = sum(b and not f for b, f in zip(right["none"], right["fp8"], strict=True))
    gained = sum(f and not b for b, f in zip(right["none"], right["fp8"], strict=True))
    p = binomtest(lost, lost + gained).pvalue if lost + gained else 1.0
    change = (sum(right["fp8"]) - sum(right["none"])) / n
    print(f"  fp8 vs bf16: accuracy {change:+.1%} ({lost} answers lost, {gained} gained, McNemar p = {p:.3g});")
    same = sum(a == b for a, b in zip(results["none"]["answers"], results["fp8"]["answers"], strict=True))
    print(f"  same answer text for {same} of {n}")
    print(f"  throughput fp8 / bf16: {rates['fp8'] / rates['none']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
