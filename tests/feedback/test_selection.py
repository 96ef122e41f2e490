"""The refresh's selection on a real DuckDB file: which answers and corrections become examples."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from feedback.events import ChatMessage, FeedbackEvent, InteractionEvent
from feedback.selection import mark_used, select
from feedback.settings import SelectionSettings
from feedback.store import DuckDBStore, Located

CHAMPION = "smollm2@base"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SINCE, UNTIL = T0, T0 + timedelta(days=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "selection.duckdb")
    yield s
    s.close()


class Events:
    """Builds interactions and feedback and writes them with made-up Kafka positions."""

    def __init__(self, store: DuckDBStore) -> None:
        self.store = store
        self.offset = 0

    def write(self, *events: Any) -> None:
        located = []
        for event in events:
            topic = "interactions" if isinstance(event, InteractionEvent) else "feedback"
            located.append(Located(event, topic, 0, self.offset))
            self.offset += 1
        self.store.write_batch(located)

    def answer(self, iid: str, *, prompt: str | None = None, **fields: Any) -> InteractionEvent:
        values: dict[str, Any] = {
            "interaction_id": iid,
            "request_id": f"req-{iid}",
            "unit_id": f"user-{iid}",
            "arm": "champion",
            "role": "served",
            "model_version": CHAMPION,
            "deployment_id": "d1",
            "phase": "champion-only",
            "messages": (ChatMessage(role="user", content=prompt or f"question {iid}"),),
            "completion": f"answer {iid}",
            "prompt_tokens": 20,
            "completion_tokens": 10,
            "latency_ms": 100.0,
            "finish_reason": "stop",
            "confidence": 0.9,
            "ts": T0 + timedelta(hours=1),
        }
        return InteractionEvent(**(values | fields))

    def rate(self, iid: str, fid: str, **fields: Any) -> FeedbackEvent:
        return FeedbackEvent(feedback_id=fid, interaction_id=iid, ts=T0 + timedelta(hours=2), **fields)


def settings(**fields: Any) -> SelectionSettings:
    return SelectionSettings(**({"strata": 1, "replay_share": 0.0} | fields))


def test_confident_answers_without_negative_feedback_are_taken_positive_first(store: DuckDBStore) -> None:
    ev = Events(store)
    ev.write(
        ev.answer("plain"),
        ev.answer("liked", confidence=0.8),
        ev.answer("disliked"),
        ev.answer("low-rated"),
        ev.answer("unsure", confidence=0.5),
        ev.answer("challenger", model_version="smollm2@abc", arm="challenger"),
        ev.answer("shadow", role="shadow", arm="challenger"),
        ev.answer("failed", error="timeout"),
        ev.answer("yesterday", ts=T0 - timedelta(hours=1)),
        ev.answer("tomorrow", ts=UNTIL + timedelta(hours=1)),
    )
    ev.write(
        ev.rate("liked", "f1", rating=5),
        ev.rate("disliked", "f2", thumb="down"),
        ev.rate("low-rated", "f3", rating=2),
    )

    chosen = select(store, settings(), champion=CHAMPION, since=SINCE, until=UNTIL)

    assert [(e.id, e.source, e.completion) for e in chosen.examples] == [
        ("liked", "confidence", "answer liked"),
        ("plain", "confidence", "answer plain"),
    ]
    assert chosen.examples[0].record() == {
        "id": "liked",
        "messages": [{"role": "user", "content": "question liked"}],
        "completion": "answer liked",
        "source": "confidence",
    }
    counts = chosen.counts
    assert counts["served_in_window"] == 6  # plain, liked, disliked, low-rated, unsure, failed
    assert counts["confident_in_window"] == 4  # plain, liked, disliked, low-rated
    assert counts["confident_negative_feedback"] == 2
    assert (counts["confidence_selected"], counts["corrections_selected"], counts["replay_selected"]) == (2, 0, 0)


def test_the_cap_is_shared_by_prompt_length_bands_as_live_traffic_is(store: DuckDBStore) -> None:
    ev = Events(store)
    short = [ev.answer(f"s{k}", prompt_tokens=10) for k in range(6)]
    long = [ev.answer(f"l{k}", prompt_tokens=200) for k in range(2)]
    unsure_long = [ev.answer(f"u{k}", prompt_tokens=200, confidence=0.3) for k in range(4)]
    ev.write(*short, *long, *unsure_long)  # traffic: 6 short, 6 long; candidates: 6 short, 2 long

    chosen = select(store, settings(daily_cap=6, strata=2), champion=CHAMPION, since=SINCE, until=UNTIL)

    taken = [e.id for e in chosen.examples]
    assert sorted(e for e in taken if not e.startswith("s")) == ["l0", "l1"]
    assert len([e for e in taken if e.startswith("s")]) == 3  # half the cap: short prompts are half the traffic
    assert [(b["band"], b["live_share"], b["quota"], b["candidates"], b["taken"]) for b in chosen.strata] == [
        (0, 0.5, 3, 6, 3),
        (1, 0.5, 3, 2, 2),  # too few long candidates: the rest of its share stays unused
    ]
    assert chosen.strata[1]["prompt_tokens_from"] == 200
    again = select(store, settings(daily_cap=6, strata=2), champion=CHAMPION, since=SINCE, until=UNTIL)
    assert [e.id for e in again.examples] == taken  # the seeded order is reproducible


def test_corrections_count_when_trusted_or_agreed_and_each_user_is_capped(store: DuckDBStore) -> None:
    ev = Events(store)
    ev.write(
        ev.answer("x1", prompt="Capital of France?", confidence=0.2),
        ev.answer("x2", prompt="capital of  france?", confidence=0.2),
        ev.answer("lonely", prompt="Tallest mountain?", confidence=0.2),
        ev.answer("t1", prompt="Largest ocean?", confidence=0.2),
        ev.answer("t2", prompt="Smallest planet?", confidence=0.2),
        ev.answer("plain"),
    )
    ev.write(
        ev.rate("x1", "c1", user_id="alice", correction="Paris."),
        ev.rate("x2", "c2", user_id="bob", correction="  paris. "),  # the same correction, another user
        ev.rate("lonely", "c3", user_id="mallory", correction="Mount Mallory."),  # nobody agrees
        ev.rate("t1", "c4", user_id="teacher", correction="The Pacific."),
        ev.rate("t2", "c5", user_id="teacher", correction="Mercury."),  # over the teacher's cap of 1
        ev.rate("plain", "c6", user_id="carol", correction="   "),  # blank: not a correction
    )

    chosen = select(
        store,
        settings(trusted_users=("teacher",), per_user_cap=1),
        champion=CHAMPION,
        since=SINCE,
        until=UNTIL,
    )

    assert [(e.id, e.source, e.completion) for e in chosen.examples] == [
        ("x1", "correction", "Paris."),
        ("t1", "correction", "The Pacific."),
        ("plain", "confidence", "answer plain"),
    ]
    counts = chosen.counts
    assert counts["corrections_in_window"] == 5
    assert counts["corrections_over_user_cap"] == 1
    assert counts["corrections_unsupported"] == 1
    assert counts["corrections_accepted"] == 2


def test_an_interaction_is_never_used_twice(store: DuckDBStore) -> None:
    ev = Events(store)
    ev.write(ev.answer("a"), ev.answer("b"))
    first = select(store, settings(), champion=CHAMPION, since=SINCE, until=UNTIL)
    assert mark_used(store, first, "2026-11-02") == 2
    assert mark_used(store, first, "2026-11-02") == 0  # idempotent

    ev.write(ev.answer("c"))
    second = select(store, settings(), champion=CHAMPION, since=SINCE, until=UNTIL)

    assert [e.id for e in second.examples] == ["c"]
    assert second.counts["confident_already_used"] == 2


def test_replay_draws_a_seeded_share_of_earlier_examples(store: DuckDBStore, tmp_path: Path) -> None:
    earlier = tmp_path / "earlier.jsonl"
    lines = [
        {"id": f"old{k}", "messages": [{"role": "user", "content": f"q{k}"}], "completion": f"a{k}"} for k in range(10)
    ]
    earlier.write_text("".join(json.dumps(line | {"source": "confidence"}) + "\n" for line in lines))
    ev = Events(store)
    ev.write(*(ev.answer(f"n{k}") for k in range(4)))

    chosen = select(
        store, settings(replay_share=0.5), champion=CHAMPION, since=SINCE, until=UNTIL, earlier_datasets=[earlier]
    )
    again = select(
        store, settings(replay_share=0.5), champion=CHAMPION, since=SINCE, until=UNTIL, earlier_datasets=[earlier]
    )

    replayed = [e for e in chosen.examples if e.source == "replay"]
    assert len(replayed) == 2
    assert [e.id for e in replayed] == [e.id for e in again.examples if e.source == "replay"]
    assert all(e.id.startswith("old") and e.completion == "a" + e.id[3:] for e in replayed)
    assert sorted(chosen.interaction_ids) == ["n0", "n1", "n2", "n3"]  # replayed examples are not new uses


def test_an_empty_window_selects_nothing(store: DuckDBStore) -> None:
    chosen = select(store, settings(), champion=CHAMPION, since=SINCE, until=UNTIL)
    assert chosen.examples == []
    assert chosen.counts["served_in_window"] == 0
