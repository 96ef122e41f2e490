"""The walking skeleton on real parts: HTTP → real model → Kafka → sink → DuckDB file.

A request through the official OpenAI client is answered by the real default model; the
interaction event goes through the real broker; the sink writes it into a real DuckDB file;
feedback for it follows the same road. The test asserts the rows exactly.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
from api_keys import Keys, bearer
from fastapi import FastAPI
from openai import OpenAI

from feedback.model.runtime import ModelRuntime, SamplingParams
from feedback.settings import KafkaSettings, Settings
from feedback.signing import verify_id
from feedback.store import DuckDBStore
from services.gateway.app import create_app
from services.gateway.backend import TransformersBackend
from services.worker.sink import Sink

SIGNING_KEY = "e2e-signing-key"
ServeApp = Callable[[FastAPI], AbstractContextManager[str]]


def settings_for(tmp_path: Path, kafka: KafkaSettings) -> Settings:
    return Settings.model_validate(
        {
            "kafka": kafka.model_dump(),
            "duckdb": {"path": tmp_path / "flywheel.duckdb"},
            "gateway": {"wal": {"dir": tmp_path / "wal"}, "drain_timeout_s": 10},
            "security": {"signing_key": SIGNING_KEY},
        }
    )


@contextmanager
def running_sink(settings: Settings) -> Iterator[tuple[Sink, DuckDBStore]]:
    store = DuckDBStore(settings.duckdb.path)
    sink = Sink(settings.kafka, store, batch_max=500, poll_timeout_ms=200)
    thread = threading.Thread(target=sink.run, name="sink", daemon=True)
    thread.start()
    try:
        yield sink, store
    finally:
        sink.stop()
        thread.join(timeout=60)
        store.close()


def wait_for(condition: Callable[[], bool], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the pipeline"
        time.sleep(0.1)


def count(store: DuckDBStore, table: str) -> int:
    return int(store.query(f"SELECT count(*) AS n FROM {table}")[0]["n"])  # noqa: S608 - fixed names


def test_chat_and_feedback_land_in_duckdb(
    tmp_path: Path, kafka_isolated: KafkaSettings, api_keys: Keys, runtime: ModelRuntime, serve_app: ServeApp
) -> None:
    settings = settings_for(tmp_path, kafka_isolated)
    app = create_app(settings, backend=TransformersBackend(runtime))
    with serve_app(app) as url, running_sink(settings) as (sink, store):
        client = OpenAI(base_url=f"{url}/v1", api_key=api_keys["user"], max_retries=0)
        answer = client.chat.completions.create(
            model="flywheel",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12,
            temperature=0,
            user="e2e-user",
        )
        signed_id = answer.model_extra["interaction_id"]  # type: ignore[index]
        raw_id = verify_id(signed_id, SIGNING_KEY)
        feedback = httpx.post(
            f"{url}/v1/feedback",
            json={"interaction_id": signed_id, "feedback_id": "e2e-fb-1", "thumb": "up", "rating": 5},
            headers=bearer(api_keys["user"]),
        )
        assert feedback.status_code == 202
        wait_for(lambda: count(store, "interactions") == 1 and count(store, "feedback") == 1)

        [row] = store.query(
            "SELECT interaction_id, unit_id, arm, role, phase, model_version, messages, completion, "
            "prompt_tokens, completion_tokens, finish_reason, confidence, error, temperature, max_tokens, "
            "kafka_partition, kafka_offset FROM interactions"
        )
        [fb] = store.query("SELECT feedback_id, interaction_id, thumb, rating, comment, correction FROM feedback")
        offsets = store.committed_offsets()
        assert sink.stats.dead_lettered == 0

    assert row["interaction_id"] == raw_id
    assert (row["unit_id"], row["arm"], row["role"], row["phase"]) == (
        "e2e-user",
        "champion",
        "served",
        "champion-only",
    )
    assert row["model_version"] == runtime.name
    assert json.loads(row["messages"]) == [{"role": "user", "content": "What is the capital of France?"}]
    assert row["completion"] == answer.choices[0].message.content
    assert answer.usage is not None
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )
    assert row["finish_reason"] == answer.choices[0].finish_reason
    assert 0 < row["confidence"] <= 1
    assert (row["error"], row["temperature"], row["max_tokens"]) == (None, 0.0, 12)
    assert fb == {
        "feedback_id": "e2e-fb-1",
        "interaction_id": raw_id,
        "thumb": "up",
        "rating": 5,
        "comment": None,
        "correction": None,
    }
    topics = kafka_isolated.topics
    assert offsets[(topics.interactions, row["kafka_partition"])] == row["kafka_offset"] + 1
    assert sum(v for (topic, _), v in offsets.items() if topic == topics.feedback) == 1


def test_the_greedy_answer_matches_the_model_runtime(
    tmp_path: Path, kafka_isolated: KafkaSettings, api_keys: Keys, runtime: ModelRuntime, serve_app: ServeApp
) -> None:
    settings = settings_for(tmp_path, kafka_isolated)
    app = create_app(settings, backend=TransformersBackend(runtime))
    messages = [{"role": "user", "content": "Name a primary color."}]
    with serve_app(app) as url:
        body = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "flywheel", "messages": messages, "max_tokens": 10, "temperature": 0},
            headers=bearer(api_keys["user"]),
            timeout=120,
        ).json()
    direct = runtime.generate(messages, SamplingParams(max_tokens=10, temperature=0))
    assert body["choices"][0]["message"]["content"] == direct.text
    assert body["usage"]["completion_tokens"] == direct.completion_tokens
