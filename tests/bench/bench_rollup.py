"""What keeping the per-unit rollups (``feedback.rollup``) costs the store's batch writes.

Two stores in one run, each first filled in SQL with 2,000,000 served responses of 40,000 users
(time-ordered interaction ids, as the gateway's UUIDv7 are) and rolled up: one writes as the sink
does (rollups kept in each batch's transaction), the other with the plain inserts. Competitors,
each batch written to both stores in turn, 5 repeats after a warm-up, medians and ratios printed:
- responses: 5,000 served responses of 997 users (the pipeline benchmark's events);
- recent feedback: 1,000 feedback events on responses among the latest 20,000 (the usual case);
- late feedback: 1,000 feedback events on responses drawn from the whole table: the lookup of
  their responses then reads every row group between the oldest and the newest id.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared event factory

from pipeline_events import interaction

from feedback.codec import to_fast
from feedback.events import AnyEvent, FeedbackEvent
from feedback.ingest import TABLES, EventBatch, TableWriter
from feedback.rollup import rebuild_sql
from feedback.store import DuckDBStore

RESPONSES, USERS, REPEATS = 2_000_000, 40_000, 5
FILL = f"""
INSERT INTO interactions (event_id, schema_version, ts, interaction_id, request_id, unit_id, arm, role,
    model_version, deployment_id, phase, messages, completion, prompt_tokens, completion_tokens, latency_ms,
    confidence, kafka_partition, kafka_offset)
SELECT 'e' || range, 1, TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_microseconds(range * 10000),
       printf('%012x', 1793491200000 + range * 10) || printf('%020x', hash(range)), 'r', 'user-' || range % {USERS},
       CASE WHEN hash(range % {USERS}) % 2 = 0 THEN 'champion' ELSE 'challenger' END, 'served', 'm', 'bench',
       'ab-50', '[]', 'ok', 10, 20, 100.0 + range % 50, 0.5, 0, range
FROM range({RESPONSES})
"""  # noqa: S608 (constants of this file)


def filled_store(path: Path, *, rollup: bool) -> DuckDBStore:
    """A store holding the filled responses, writing with or without the rollups."""
    store = DuckDBStore(path)
    store.execute(FILL)
    store.execute(rebuild_sql())
    store.execute("CHECKPOINT")
    if not rollup:  # the competitor: the plain inserts the store had before the rollups
        store._writers = {table: TableWriter(store._con, table, kind) for kind, table in TABLES.items()}
    return store


def batch_of(events: Sequence[AnyEvent]) -> EventBatch:
    """The events as one batch of the store's write path."""
    batch = EventBatch()
    for k, event in enumerate(events):
        batch.add(*to_fast(event), 0, k)
    return batch


class Batches:
    """Fresh batches of each kind (new keys every call, the same for both stores)."""

    def __init__(self, ids: list[str], recent: list[str]) -> None:
        self.ids, self.recent, self.calls = ids, recent, 0
        self.rng = random.Random(0)

    def responses(self) -> EventBatch:
        self.calls += 1
        start = RESPONSES + self.calls * 5000
        ids = [f"{1793491200000 + (start + k) * 10:012x}{k:020x}" for k in range(5000)]
        return batch_of([interaction(start + k, interaction_id=i) for k, i in enumerate(ids)])

    def feedback(self, pool: list[str]) -> EventBatch:
        self.calls += 1
        picks = [self.rng.choice(pool) for _ in range(1000)]
        events = [
            FeedbackEvent(feedback_id=f"f-{self.calls}-{k}", interaction_id=i, thumb="up" if k % 3 else "down")
            for k, i in enumerate(picks)
        ]
        return batch_of(events)


def timed(stores: dict[str, DuckDBStore], make: Callable[[], EventBatch]) -> dict[str, list[float]]:
    """Seconds per batch for each store; both get the same batch in each repeat, after a warm-up."""
    out: dict[str, list[float]] = {name: [] for name in stores}
    for repeat in range(REPEATS + 1):
        batch = make()
        for name, store in stores.items():
            start = time.perf_counter()
            store.write_events(batch)
            if repeat:
                out[name].append(time.perf_counter() - start)
    return out


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, duckdb {duckdb.__version__}")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        stores = {
            "rollup": filled_store(Path(tmp) / "rollup.duckdb", rollup=True),
            "plain": filled_store(Path(tmp) / "plain.duckdb", rollup=False),
        }
        ids = [r["interaction_id"] for r in stores["plain"].query("SELECT interaction_id FROM interactions")]
        batches = Batches(ids, ids[-20_000:])
        kinds = {
            "responses: 5,000 per batch": batches.responses,
            "recent feedback: 1,000 per batch": lambda: batches.feedback(batches.recent),
            "late feedback: 1,000 per batch": lambda: batches.feedback(batches.ids),
        }
        print(f"{RESPONSES:,} responses stored; median ms per batch over {REPEATS} repeats\n")
        print(f"{'batch':<36} {'plain':>8} {'rollup':>8} {'ratio':>6} {'extra us/event':>15}")
        for name, make in kinds.items():
            times = timed(stores, make)
            plain, rolled = statistics.median(times["plain"]), statistics.median(times["rollup"])
            events = 5000 if name.startswith("responses") else 1000
            extra = (rolled - plain) / events * 1e6
            print(f"{name:<36} {plain * 1e3:>8.1f} {rolled * 1e3:>8.1f} {rolled / plain:>6.2f} {extra:>15.1f}")
        for store in stores.values():
            store.close()
    print(f"\nload average before / after: {load} / {os.getloadavg()}")


if __name__ == "__main__":
    main()
