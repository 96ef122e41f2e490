"""The official OpenAI client against the gateway over real HTTP, on the real default model and Kafka.

Non-streaming and streaming (SSE) answers must be the same greedy text the model runtime makes,
carry the signed interaction id, and each become exactly one interaction event on Kafka, logged
after the stream ended, with the time to first token. A stream with
``stream_options.include_usage`` ends with a chunk holding the usage and no choices.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from api_keys import Keys
from fastapi import FastAPI
from openai import OpenAI
from pipeline_events import topic_events

from feedback.events import InteractionEvent
from feedback.model.runtime import ModelRuntime, SamplingParams
from feedback.settings import KafkaSettings, Settings
from feedback.signing import verify_id
from services.gateway.app import create_app
from services.gateway.backend import TransformersBackend

SIGNING_KEY = "serving-signing-key"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ServeApp = Callable[[FastAPI], AbstractContextManager[str]]


def serving_settings(tmp_path: Path, kafka: KafkaSettings) -> Settings:
    return Settings.model_validate(
        {
            "kafka": kafka.model_dump(),
            "gateway": {"wal": {"dir": tmp_path / "wal"}, "drain_timeout_s": 10},
            "security": {"signing_key": SIGNING_KEY},
            "model": {"registry_dir": tmp_path / "registry"},
        }
    )


def interaction_events(kafka: KafkaSettings, expected: int, timeout_s: float = 60) -> list[InteractionEvent]:
    events = topic_events(kafka.bootstrap_servers, kafka.topics.interactions, expected, timeout_s)
    assert all(isinstance(e, InteractionEvent) for e in events)
    return sorted((e for e in events if isinstance(e, InteractionEvent)), key=lambda e: e.event_id)


def test_openai_client_non_streaming_and_streaming(
    tmp_path: Path, kafka_isolated: KafkaSettings, api_keys: Keys, runtime: ModelRuntime, serve_app: ServeApp
) -> None:
    expected = runtime.generate(QUESTION, SamplingParams(max_tokens=12, temperature=0.0))
    settings = serving_settings(tmp_path, kafka_isolated)
    with serve_app(create_app(settings, backend=TransformersBackend(runtime, settings.gateway))) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key=api_keys["user"], max_retries=0)
        answer = client.chat.completions.create(
            model="flywheel",
            messages=QUESTION,
            max_tokens=12,
            temperature=0,
            user="alice",  # type: ignore[arg-type]
        )
        raw = client.chat.completions.with_raw_response.create(
            model="flywheel",
            messages=QUESTION,
            max_tokens=12,
            temperature=0,
            stream=True,
            user="bob",  # type: ignore[arg-type]
        )
        chunks = list(raw.parse())
        with_usage = list(
            client.chat.completions.create(
                model="flywheel",
                messages=QUESTION,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                user="carol",  # type: ignore[arg-type]
            )
        )

    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].finish_reason == expected.finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == expected.completion_tokens

    signed = raw.headers["X-Interaction-Id"]
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert len([p for p in pieces if p]) >= 3  # token by token, not one blob
    assert "".join(pieces) == expected.text
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.finish_reason is None for chunk in chunks[:-1] for c in chunk.choices)
    assert {c.model_extra["interaction_id"] for c in chunks if c.model_extra} == {signed}
    assert {c.id for c in chunks} == {f"chatcmpl-{verify_id(signed, SIGNING_KEY)}"}

    usage = with_usage[-1].usage
    assert with_usage[-1].choices == []
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        expected.prompt_tokens,
        expected.completion_tokens,
        expected.prompt_tokens + expected.completion_tokens,
    )
    assert all(c.usage is None for c in with_usage[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in with_usage[:-1]) == expected.text
    assert all(c.usage is None for c in chunks)  # not asked for: not sent

    served, streamed, _ = interaction_events(kafka_isolated, 3)
    assert (served.unit_id, streamed.unit_id) == ("alice", "bob")
    assert streamed.interaction_id == verify_id(signed, SIGNING_KEY)
    for event in (served, streamed):
        assert (event.completion, event.completion_tokens) == (expected.text, expected.completion_tokens)
        assert event.confidence is not None
        assert abs(event.confidence - expected.confidence) < 1e-4
        assert (event.arm, event.role, event.phase, event.error) == ("champion", "served", "champion-only", None)
    assert served.ttft_ms is None
    assert streamed.ttft_ms is not None
    assert 0 < streamed.ttft_ms <= streamed.latency_ms
