"""The curated dataset on disk: the held-out split, the JSONL files and the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedback.assignment import BUCKETS, bucket
from feedback.curation.report import CurationError, CurationResult
from feedback.examples import Example, dumps, write_examples

FORMAT = "flywheel-dataset/1"
TRAIN_FILE = "train.jsonl"
HELD_OUT_FILE = "held_out.jsonl"
MANIFEST_FILE = "manifest.json"


def is_held_out(example: Example, share: float, seed: int) -> bool:
    """Whether ``example`` belongs to the held-out split: never for replay, else by a salted id hash.

    Replay examples were trained on before, so holding them out would flatter the candidate.
    """
    return example.source != "replay" and bucket(f"held-out:{seed}", example.id) < share * BUCKETS


def split(examples: Sequence[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)`` by :func:`is_held_out`, each in input order."""
    train: list[Example] = []
    held_out: list[Example] = []
    for example in examples:
        (held_out if is_held_out(example, share, seed) else train).append(example)
    return train, held_out


def write_dataset(result: CurationResult, out_dir: Path) -> dict[str, Any]:
    """Write the split dataset and its manifest into the new directory ``out_dir``; return the manifest.

    The files are written into a staging directory beside ``out_dir`` and renamed into place
    together, so ``out_dir`` holds all three files or does not exist.

    Raises:
        CurationError: ``out_dir`` already exists and is not empty, or cannot be written.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CurationError(f"{out_dir}: the dataset directory already exists and is not empty")
    settings = result.settings
    train, held_out = split(result.examples, settings.held_out_share, settings.split_seed)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    except OSError as exc:
        raise CurationError(f"{out_dir}: cannot create the dataset directory: {exc}") from exc
    try:
        files = {}
        for key, name, part in (("train", TRAIN_FILE, train), ("held_out", HELD_OUT_FILE, held_out)):
            write_examples(staging / name, part)
            files[key] = {"path": name, "sha256": _sha256(staging / name), "examples": len(part)}
        manifest = _manifest(result, files)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(staging, out_dir)
    except OSError as exc:
        raise CurationError(f"{out_dir}: cannot write the dataset: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _manifest(result: CurationResult, files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "seconds": round(sum(stage.seconds for stage in result.stages), 3),
        "model": result.model,
        "settings": result.settings.model_dump(mode="json"),
        "reference": result.reference,
        "input": {"examples": result.input_count, "by_source": dict(result.input_sources)},
        "stages": [stage.to_json() for stage in result.stages],
        "output": {"examples": len(result.examples), "by_source": by_source(result.examples)},
        "files": dict(files),
    }


def by_source(examples: Sequence[Example]) -> dict[str, int]:
    """How many examples come from each source, by source name."""
    return dict(sorted(Counter(example.source for example in examples).items()))


def describe_reference(reference: Sequence[Example]) -> dict[str, Any]:
    """Size and sha256 of a reference corpus (the bytes :func:`write_examples` would write)."""
    body = "".join(dumps(example) + "\n" for example in reference).encode()
    return {"examples": len(reference), "sha256": hashlib.sha256(body).hexdigest()}


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
