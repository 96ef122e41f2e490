"""What an A/B challenger that fails costs its users: served latency when the champion answers for it.

The gateway runs on the default model over real HTTP (Kafka unreachable, as in bench_serving);
4 concurrent clients send 16 greedy requests (max_tokens 12). Three sides, each run in the same
process, after a warm-up, repeated ``BENCH_REPEATS`` (>= 3) times, interleaved:

- off: the champion alone;
- fallback: A/B with every user in the challenger arm and a challenger whose adapter is not in
  the registry, the breaker disabled, so every request tries the challenger, fails, and the
  champion answers;
- breaker: the same with the breaker on (after 5 failures the challenger is skipped).

Ratios of p50 and p99 to "off" are printed; every answer must be a 200.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))  # run by tests/bench/run.py, which adds only the root

from bench_serving import REPEATS, body, closed_loop, gateway, quantiles, requests16

from feedback import deployments
from feedback.model.runtime import ModelRuntime
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import ModelSettings
from services.gateway.fallback import ChallengerBreaker

BROKEN = f"{DEFAULT_MODEL}+{'0' * 64}"  # an adapter version the registry does not hold


def deploy(app: Any, side: str) -> None:
    chat = app.state.chat
    state = deployments.initial_state(chat.deployment.champion, [100])
    if side != "off":
        state = deployments.set_challenger(state, BROKEN, by="bench", mode="ab")
    chat.breaker = ChallengerBreaker() if side == "breaker" else ChallengerBreaker(failures=10**9)
    chat.deployment = state


def fallbacks(app: Any) -> float:
    text = app.state.metrics.render().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("flywheel_challenger_fallbacks_total")
    )


def bench_fallback(runtime: ModelRuntime, workdir: Path) -> None:
    payloads = [body(r, max_tokens=12, user=f"u{i}") for i, r in enumerate(requests16())]
    sides = ("off", "fallback", "breaker")
    print(f"challenger fallback: 4 concurrent clients, {len(payloads)} requests per run, max_tokens 12, {REPEATS} runs")
    with gateway(runtime, workdir) as (url, app):
        latencies: dict[str, list[float]] = {side: [] for side in sides}
        for side in sides:  # warm-up
            deploy(app, side)
            asyncio.run(closed_loop(url, payloads[:8], 4))
        before = fallbacks(app)
        for _ in range(REPEATS):
            for side in sides:
                deploy(app, side)
                latencies[side].extend(asyncio.run(closed_loop(url, payloads, 4)))
        fell_back = fallbacks(app) - before
    p50_off, p99_off = quantiles(latencies["off"])
    for side in sides:
        p50, p99 = quantiles(latencies[side])
        print(
            f"  {side:9} p50 {p50:.3f} s (ratio {p50 / p50_off:.2f})  p99 {p99:.3f} s (ratio {p99 / p99_off:.2f})"
            f"  mean {statistics.fmean(latencies[side]):.3f} s"
        )
    print(f"  fallbacks counted: {fell_back:.0f} of {2 * REPEATS * len(payloads)} challenger-arm requests")


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the unreachable Kafka is on purpose
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        bench_fallback(ModelRuntime.load(prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)), Path(tmp))


if __name__ == "__main__":
    main()
