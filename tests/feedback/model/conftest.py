"""Fixtures for the model runtime tests: the real default model, converted once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedback.model.runtime import ModelRuntime
from feedback.model.source import DEFAULT_MODEL, prepare_model


@pytest.fixture(scope="session", autouse=True)
def _offline_hub() -> Iterator[None]:
    # Nothing may download weights: every test runs with the hub switched off.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache directory for converted models; removed (about 0.5 GB) after the session."""
    cache = tmp_path_factory.mktemp("model-cache")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def model_dir(model_cache: Path) -> Path:
    """The default model converted from its GGUF file (about 30 s on two cores, once)."""
    return prepare_model(DEFAULT_MODEL, model_cache)


@pytest.fixture(scope="module")
def runtime(model_dir: Path) -> ModelRuntime:
    """The default model loaded on CPU in float32."""
    return ModelRuntime.load(model_dir)
