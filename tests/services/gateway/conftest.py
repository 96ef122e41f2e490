"""Fixtures of the gateway's unit tests: an app on fake backends with Kafka unreachable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_keys import SEEDED_BOOK, USER
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from test_api import make_settings

from services.gateway.app import create_app


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def client(tmp_path: Path, backend: FakeBackend) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path), backend=backend, keys=SEEDED_BOOK)
    with TestClient(app, headers=USER) as test_client:
        yield test_client
