"""Realistic events for the pipeline's tests and benchmarks (about 1.5 KB each, every field set).

Importable from any test module: pytest puts this folder on ``sys.path`` (the root conftest.py
lives here); benchmarks add it themselves.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from feedback import catalogue
from feedback.events import AnyEvent, AuditEvent, ChatMessage, FeedbackEvent, InteractionEvent, decode_event, utc_now
from feedback.settings import KafkaSettings, Settings
from feedback.store import DuckDBStore, Located

PROMPT = (
    "I am planning a three-day trip to Lisbon in late October with my partner. We like walking, "
    "small museums, and seafood, but we want to avoid the most crowded tourist traps. Could you "
    "suggest a day-by-day plan with neighbourhoods, a couple of restaurants, and how to get around?"
)
ANSWER = (
    "Day 1: start in Alfama early, before the crowds, and walk up to the Miradouro de Santa Luzia. "
    "Visit the small Museu do Fado, then have grilled sardines at a family tasca near the cathedral. "
    "Day 2: take tram 15 to Belem, see the monastery cloister and the MAAT, and eat at a seafood "
    "place in nearby Pedroucos. Day 3: explore Principe Real and its garden, the Gulbenkian museum, "
    "and end with dinner in Campo de Ourique. Use the Viva Viagem card for trams and the metro."
)


def interaction(n: int, *, interaction_id: str | None = None) -> InteractionEvent:
    """A served champion answer with every field set; ``n`` makes its ids unique."""
    return InteractionEvent(
        interaction_id=interaction_id or f"{n:032x}",
        request_id=f"req-{n:012d}",
        unit_id=f"user-{n % 997}",
        arm="champion",
        role="served",
        model_version="smollm2-135m-instruct@base",
        deployment_id="deployment-0001",
        phase="champion-only",
        messages=(
            ChatMessage(role="system", content="You are a concise, friendly travel assistant."),
            ChatMessage(role="user", content=PROMPT),
        ),
        completion=ANSWER,
        prompt_tokens=96,
        completion_tokens=118,
        latency_ms=812.5 + n % 100,
        ttft_ms=41.25,
        finish_reason="stop",
        confidence=0.71,
        temperature=0.7,
        top_p=0.95,
        max_tokens=256,
        seed=n,
    )


def catalogue_answers(
    champion: str,
    count: int,
    *,
    seed: int = 5,
    products: int = 60,
    offset: int = 0,
    listed: int = 3,
    at: datetime | None = None,
) -> list[Located]:
    """``count`` catalogue questions answered by ``champion`` with the reference answer, confidently,
    at ``at`` (default five minutes ago), as the sink stores them (``offset`` keeps ids and Kafka
    offsets apart; ``listed`` catalogue entries in each prompt)."""
    at = at or utc_now() - timedelta(minutes=5)
    shop = catalogue.build_catalogue(seed, products)
    asked = catalogue.make_questions(shop, seed, count, id_prefix=f"q{offset}", listed=listed)
    located = []
    for n, question in enumerate(asked):
        event = InteractionEvent(
            interaction_id=f"i{offset}-{n}",
            request_id=f"r{offset}-{n}",
            unit_id=f"user-{n % 7}",
            arm="champion",
            role="served",
            model_version=champion,
            deployment_id="initial",
            phase="champion-only",
            messages=tuple(ChatMessage(role=m["role"], content=m["content"]) for m in question.messages),
            completion=question.answer,
            prompt_tokens=180,
            completion_tokens=30,
            latency_ms=50.0,
            finish_reason="stop",
            confidence=0.9,
            ts=at,
        )
        located.append(Located(event, "interactions", 0, offset + n))
    return located


def feedback(n: int) -> FeedbackEvent:
    """A rating with a comment for interaction ``n``."""
    return FeedbackEvent(feedback_id=f"fb-{n}", interaction_id=f"{n:032x}", rating=1 + n % 5, comment="useful")


def audit(n: int) -> AuditEvent:
    """An admin action."""
    return AuditEvent(actor="admin", action="deployment.ramp", resource=f"deployment-{n}", details={"to": 10})


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` has ended: gone, or a zombie its parent has not reaped yet whose threads have all
    exited. Only then are its files, its sockets among them, closed: the main thread of a killed process can be a
    zombie while its other threads are still running down, and its listening socket still takes connections."""
    try:
        zombie = "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
        return zombie and os.listdir(f"/proc/{pid}/task") == [str(pid)]
    except FileNotFoundError:
        return True


def run_in_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Start ``target`` in a daemon thread."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def sink_audit_until(kafka: KafkaSettings, store: DuckDBStore, expected: int) -> None:
    """Run the worker's sink on ``kafka`` into ``store`` until ``expected`` audit rows are stored."""
    from services.worker.sink import Sink  # not at the top: benchmarks import this module without services

    sink = Sink(kafka, store, batch_max=500, poll_timeout_ms=100)
    thread = run_in_thread(sink.run, "audit-sink")
    try:
        wait_until(lambda: sink.stats.audit >= expected, what=f"{expected} audit rows in DuckDB")
    finally:
        sink.stop()
        thread.join(timeout=60)


def produce(kafka: KafkaSettings, events: Iterable[AnyEvent]) -> None:
    """Send ``events`` to their topics (interactions, feedback or audit) with their own keys, and wait for the acks."""
    topics = {"interaction": kafka.topics.interactions, "feedback": kafka.topics.feedback, "audit": kafka.topics.audit}
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    for event in events:
        producer.send(topics[event.type], key=event.kafka_key(), value=event.encode())
    producer.flush(30)
    producer.close()


def worker_settings_in(tmp_path: Path, kafka: KafkaSettings, **worker: Any) -> Settings:
    """A worker's settings with every file under ``tmp_path`` and no schedule (the tests start what they need).

    ``worker`` adds or overrides settings of the ``worker`` section.
    """
    return Settings(
        kafka=kafka,
        duckdb={"path": tmp_path / "w.duckdb"},
        worker={"poll_timeout_ms": 100, "lake_dir": tmp_path / "lake", **worker},
        refresh={"work_dir": tmp_path / "refreshes"},
        model={"registry_dir": tmp_path / "registry"},
        scheduler={"enabled": False},
    )


def topic_events(bootstrap_servers: str, topic: str, expected: int, timeout_s: float = 60) -> list[AnyEvent]:
    """The events on ``topic`` from its start, once ``expected`` of them arrived (or the time is up)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest")
    events: list[AnyEvent] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(events) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                events += [decode_event(record.value) for record in records]
    finally:
        consumer.close()
    return events
