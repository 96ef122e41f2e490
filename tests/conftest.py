"""Session fixtures shared by the suites: the real local Kafka broker and the default model.

The broker starts once per test session through infra/kafka/kafka.sh, on free ports in a
temporary data directory, and is stopped at the end whatever happened. The default model is
converted once into the user's model cache (the same cache the services use), then loaded.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import uvicorn
from api_keys import Keys, publish_keys
from fastapi import FastAPI

from feedback.model.runtime import ModelRuntime
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import KafkaSettings, LocalKafkaSettings, ModelSettings, TopicSettings
from feedback.topics import ensure_topics
from services.cli import broker
from services.cli.ports import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """A real single-node Kafka broker with the project's topics; its settings."""
    local = LocalKafkaSettings(
        port=free_port(), controller_port=free_port(), data_dir=tmp_path_factory.mktemp("kafka"), heap="512m"
    )
    started = broker.run_script("start", local, capture=True)
    if started.returncode != 0:
        broker.run_script("stop", local, capture=True)
        pytest.fail(f"the local Kafka broker did not start:\n{started.stdout}\n{started.stderr}")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{local.port}", local=local)
    try:
        ensure_topics(settings)
        yield settings
    finally:
        broker.run_script("stop", local, capture=True)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The default model, converted once into the model cache."""
    return prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)


@pytest.fixture(scope="session")
def runtime(model_dir: Path) -> ModelRuntime:
    """The default model, loaded once for the session."""
    return ModelRuntime.load(model_dir)


@pytest.fixture
def unique_topics() -> TopicSettings:
    """Topic names no other test uses (not created yet), two partitions each."""
    suffix = uuid.uuid4().hex[:8]
    defaults = TopicSettings().model_dump().items()
    return TopicSettings(
        **{field: f"{name}-{suffix}" for field, name in defaults if isinstance(name, str)}, partitions=2
    )


@pytest.fixture
def kafka_isolated(kafka: KafkaSettings, unique_topics: TopicSettings) -> KafkaSettings:
    """The session broker with topics and a consumer group of this test's own."""
    isolated = kafka.model_copy(
        update={"topics": unique_topics, "consumer_group": f"sink-{unique_topics.interactions}"}
    )
    ensure_topics(isolated)
    return isolated


@pytest.fixture
def api_keys(kafka_isolated: KafkaSettings) -> Keys:
    """A key per role (``api_keys["admin"]``, ...) on this test's own keys topic."""
    return publish_keys(kafka_isolated)


ServeApp = Callable[[FastAPI], AbstractContextManager[str]]


@pytest.fixture
def serve_app() -> ServeApp:
    """Run an app under uvicorn on a free port in a thread: ``with serve_app(app) as url: ...``."""

    @contextmanager
    def serve(app: FastAPI) -> Iterator[str]:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start on port {port}")
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=60)

    return serve
