"""A whole refresh, select → deploy, on a real broker and DuckDB file, beside a bare peft loop on its data.

The store holds 5% more than ``BENCH_REFRESH_SAMPLES`` (default 1,000) served catalogue answers of
about 138 tokens each as the chat template renders them (a prompt with one catalogue entry, and a
two-sentence answer; the target asks for at least 100), all confident, so that near-duplicate
removal leaves about that many curated examples. The refresh runs as the worker runs it (selection
on the DuckDB file, curation, training in a subprocess at lower priority with
``BENCH_REFRESH_THREADS`` torch threads, default 2, the gate, registration, and publication of the
shadow challenger on the deployments topic, read back). Then a bare peft loop (the textbook
``model(..., labels=...).loss`` loop of ``bench_training.py``) trains the same steps on the same
training file in this process with the same thread count; tokens/s of the two are compared
(target: ours / bare >= 0.9), and the refresh's wall time against its target (<= 600 s).

Forgetting: then ``BENCH_REFRESH_DAYS`` (default 5) simulated daily refreshes of
``BENCH_REFRESH_DAY_SAMPLES`` (default 200) new answers each (another catalogue each day), each
promoted before the next, so every refresh continues the previous champion's adapter with replay.
The loss of the last champion against the original one (the base model) is printed on two frozen
golden sets (target: at most +2%): the gate's catalogue set, which the training task improves, and
``evaluation/golden/general.jsonl``, 40 general questions with hand-written reference answers that
no refresh trains on, which is where forgetting would show.

One run each: a refresh of this size is minutes long, and its steps are printed with their seconds.
``python tests/bench/bench_refresh.py refresh`` runs only the first part (the timed one),
``... forgetting`` only the second (losses only, so it may share the machine).
"""

from __future__ import annotations

import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from bench_training import bare_loop
from local_kafka import fresh_topics, local_broker
from pipeline_events import catalogue_answers

from evaluation.gate import GOLDEN_PATH, evaluate_candidate
from feedback.deployments import promote
from feedback.events import utc_now
from feedback.examples import read_examples
from feedback.model.runtime import model_name
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import GateSettings, ModelSettings, Settings
from feedback.store import DuckDBStore
from feedback.topics import ensure_topics
from services.worker.app import Deployments
from services.worker.refresh import Refresher

SAMPLES = int(os.environ.get("BENCH_REFRESH_SAMPLES", "1000"))
DAYS = int(os.environ.get("BENCH_REFRESH_DAYS", "5"))
DAY_SAMPLES = int(os.environ.get("BENCH_REFRESH_DAY_SAMPLES", "200"))
THREADS = int(os.environ.get("BENCH_REFRESH_THREADS", "2"))
TARGET_S = 600.0
LISTED = 1  # catalogue entries per prompt: about 138 tokens an example
GENERAL_GOLDEN = GOLDEN_PATH.with_name("general.jsonl")


@contextmanager
def refreshing(**sections: Any) -> Iterator[tuple[Path, Refresher, Deployments]]:
    """A broker, a DuckDB file, a registry and the deployments follower in a temporary directory."""
    with local_broker() as broker_settings, tempfile.TemporaryDirectory() as tmp:
        kafka = fresh_topics(broker_settings)
        ensure_topics(kafka)
        root = Path(tmp)
        settings = Settings(
            kafka=kafka,
            model={"registry_dir": root / "registry"},
            refresh={"work_dir": root / "refreshes"},
            training={"threads": THREADS},
            **sections,
        )
        store = DuckDBStore(root / "bench.duckdb")
        deployments = Deployments(settings)
        deployments.watcher.start()
        deployments.watcher.caught_up.wait(30)
        try:
            yield (
                root,
                Refresher(settings, store, deployment=deployments.current, publish=deployments.publish),
                deployments,
            )
        finally:
            deployments.watcher.close()
            store.close()


def forgetting() -> None:
    """Golden-set loss after ``DAYS`` consecutive refreshes, each promoted, against the original champion."""
    golden: list[tuple[float, float]] = []
    with refreshing() as (_, refresher, deployments):
        for day in range(DAYS):
            champion = deployments.current().champion
            # served after the last refresh began, or its selection (everything since then) would miss them
            answers = catalogue_answers(
                champion, DAY_SAMPLES, seed=100 + day, offset=day * DAY_SAMPLES, listed=LISTED, at=utc_now()
            )
            refresher.store.write_batch(answers)
            outcome = refresher.run(f"2026-01-{day + 1:02d}")
            print(f"day {day + 1}: {outcome['status']}: {outcome['message'][:100]}; seconds {outcome['seconds']}")
            if outcome["status"] != "deployed":
                break
            losses, last_version = outcome["gate"]["golden"], str(outcome["version"])
            golden.append((losses["champion_loss"], losses["candidate_loss"]))
            deployments.publish(promote(deployments.current(), by="bench"))
        if not golden:
            raise SystemExit("no refresh was deployed; nothing to compare")
        general = _general_losses(refresher.settings, refresher.registry.fetch(last_version))
    print(f"{'golden set':>11} {'days':>5} {'original loss':>14} {'last champion':>14} {'change':>8} {'target':>7}")
    for name, (original, last) in (("catalogue", (golden[0][0], golden[-1][1])), ("general", general)):
        change = (last / original - 1) * 100
        print(f"{name:>11} {len(golden):>5} {original:>14.4f} {last:>14.4f} {change:>+7.2f}% {'+2.00%':>7}")


def _traffic(champion: str, curated: int) -> list[Any]:
    """About ``curated`` distinct answers after curation: 5% more from catalogues of 175 questions each.

    One catalogue offers 320 products x 5 attributes, so more questions from one would repeat
    prompts that near-duplicate removal drops.
    """
    per = 175
    catalogues = math.ceil(curated * 1.05 / per)
    return [
        answer
        for n in range(catalogues)
        for answer in catalogue_answers(champion, per, seed=3 + n, products=320, offset=n * per, listed=LISTED)
    ]


def _general_losses(settings: Settings, adapter: Path) -> tuple[float, float]:
    """Mean loss of the base model and of ``adapter`` on the general golden set, scored by the gate."""
    general = read_examples(GENERAL_GOLDEN)
    model_dir = prepare_model(settings.model.source, settings.model.cache_dir)
    quick = GateSettings(max_new_tokens=1, prompt_control=False, heldout_cap=2)  # only the golden losses are read
    verdict = evaluate_candidate(model_dir, adapter, general[:2], golden=general, settings=quick)
    if verdict.golden is None:
        raise SystemExit(f"the gate could not score the general golden set: {verdict.reasons}")
    mean = verdict.golden.mean
    return mean(verdict.golden.champion_loss), mean(verdict.golden.candidate_loss)


def main() -> None:
    model_dir = prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads {THREADS}")
    if sys.argv[1:] == ["forgetting"]:
        forgetting()
        return
    timed_refresh(model_dir)
    if sys.argv[1:] != ["refresh"]:
        forgetting()


def timed_refresh(model_dir: Path) -> None:
    """One refresh of about ``SAMPLES`` curated examples, timed, and the bare loop on its training file."""
    served = _traffic(model_name(model_dir), SAMPLES)
    with refreshing(selection={"daily_cap": len(served), "replay_share": 0.0}) as (root, refresher, _):
        refresher.store.write_batch(served)
        started = time.perf_counter()
        outcome = refresher.run(utc_now().date().isoformat())
        wall = time.perf_counter() - started
        print(f"refresh: {outcome['status']}: {outcome['message']}")
        print(f"  seconds per step: {outcome['seconds']}")
        training = outcome.get("training")
        if not training:
            raise SystemExit("the refresh did not train; nothing to compare")
        curated = outcome["curation"]["output"]["examples"]
        ours_rate = training["tokens"] / outcome["seconds"]["train"]
        torch.set_num_threads(THREADS)
        dataset = root / "refreshes" / outcome["run"] / "dataset" / "train.jsonl"
        seconds, tokens = bare_loop(model_dir, dataset, root / "bare", refresher.settings.training, training["steps"])
        bare_rate = tokens / seconds
    print(f"{'curated':>8} {'tokens/example':>15} {'refresh s':>10} {'target s':>9} {'ours / target':>14}")
    print(f"{curated:>8} {training['tokens'] / training['examples']:>15.0f} {wall:>10.0f} {TARGET_S:>9.0f} "
          f"{wall / TARGET_S:>14.2f}")  # fmt: skip
    print(f"{'bare peft tok/s':>16} {'refresh training tok/s':>23} {'ours / bare':>12}")
    print(f"{bare_rate:>16.1f} {ours_rate:>23.1f} {ours_rate / bare_rate:>12.2f}")


if __name__ == "__main__":
    main()
