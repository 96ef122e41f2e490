"""Convert a GGUF file once into a cached safetensors model directory.

Loading the default model from GGUF takes about 20 s (dequantization); the converted directory
loads in well under a second. The cache entry is keyed by the GGUF file's name, size and
modification time, so a lookup only stats the file, and a different file gets a different
entry. An entry is written into a temporary directory and renamed into place when complete, so
a crash never leaves a half-written cache; the manifest records the file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feedback.errors import ModelError, ModelNotFoundError, NotCausalLMError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MANIFEST = "flywheel-manifest.json"
_GGUF_MAGIC = b"GGUF"
# What loading a malformed or unsupported GGUF raises inside transformers and gguf.
_LOAD_ERRORS = (ValueError, KeyError, IndexError, TypeError, AttributeError, OSError, RuntimeError)


def cache_key(gguf: Path) -> str:
    """Return the cache entry name for ``gguf``: its stem plus a digest of name, size, mtime."""
    stat = gguf.stat()
    fingerprint = f"{gguf.name}|{stat.st_size}|{stat.st_mtime_ns}"
    return f"{gguf.stem}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}"


def cached_conversion(gguf: Path, cache_dir: Path, *, name: str) -> Path:
    """Return the converted directory for ``gguf``, converting it first if not cached.

    Raises:
        ModelNotFoundError: ``gguf`` does not exist.
        NotCausalLMError: ``gguf`` is not a GGUF file or holds no causal language model.
    """
    if not gguf.is_file():
        raise ModelNotFoundError(f"GGUF file {str(gguf)!r} does not exist")
    target = cache_dir / cache_key(gguf)
    if (target / MANIFEST).is_file():
        return target
    _check_magic(gguf)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        convert_gguf(gguf, staging, name=name)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, out_dir: Path, *, name: str) -> None:
    """Dequantize ``gguf`` and save it as a safetensors model directory in ``out_dir``.

    The directory gets the weights, config, generation config, tokenizer (with its chat
    template) and a manifest naming the source, its sha256, the time and library versions.
    """
    import torch
    import transformers

    started = time.perf_counter()
    model, tokenizer = load_gguf(gguf)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    manifest: dict[str, Any] = {
        "name": name,
        "source": str(gguf),
        "source_sha256": _sha256(gguf),
        "source_size": gguf.stat().st_size,
        "converted_at": datetime.now(UTC).isoformat(),
        "conversion_seconds": round(time.perf_counter() - started, 3),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    # Written last: an entry with a manifest is complete.
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``gguf`` with transformers and rebuild it as a plain (savable) float model.

    transformers flags a model loaded from GGUF as quantized and refuses to save it, so the
    model is rebuilt from its config and state dict.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except _LOAD_ERRORS as exc:
        raise NotCausalLMError(
            f"GGUF file {str(gguf)!r} could not be loaded as a causal language model: {exc}"
        ) from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
        config, dtype=loaded.dtype
    )
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    return model.eval(), tokenizer


def _check_magic(gguf: Path) -> None:
    with gguf.open("rb") as handle:
        magic = handle.read(len(_GGUF_MAGIC))
    if magic != _GGUF_MAGIC:
        raise NotCausalLMError(f"file {str(gguf)!r} is not a GGUF file (it does not start with {_GGUF_MAGIC!r})")


def _publish(staging: Path, target: Path) -> None:
    if target.exists() and not (target / MANIFEST).is_file():
        # Not written by this module (entries are renamed into place complete): replace it.
        shutil.rmtree(target)
    try:
        staging.rename(target)
    except OSError as exc:
        # Another process published the same entry first; its copy is just as good.
        if not (target / MANIFEST).is_file():
            raise ModelError(f"could not write the model cache entry {str(target)!r}: {exc}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
