"""A content-addressed registry of LoRA adapter versions on disk, with lineage.

An adapter version is named by the SHA-256 of its weights, its config and the manifest of the
dataset it was trained on, so the same adapter is stored once and a gateway anywhere can fetch it
by that name and check, on load, that the bytes are what the name says. Layout::

    <root>/<version>/adapter_config.json
    <root>/<version>/adapter_model.safetensors
    <root>/<version>/dataset_manifest.json   canonical JSON, part of the hash
    <root>/<version>/lineage.json            parent, dataset hash, training, metrics, state ...

A version is written into a temporary directory and renamed into place, so a reader never sees
half an adapter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedback.errors import RegistryError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
DATASET_MANIFEST = "dataset_manifest.json"
LINEAGE = "lineage.json"
STATES = ("candidate", "shadow", "canary", "champion", "retired", "rejected", "superseded")


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces: the same mapping always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def adapter_hash(adapter_dir: Path, dataset_manifest: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the adapter's files and the dataset manifest, each prefixed by its name."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        path = adapter_dir / name
        if not path.is_file():
            raise RegistryError(f"{str(adapter_dir)!r} holds no {name}")
        digest.update(name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    digest.update(DATASET_MANIFEST.encode() + b"\0" + canonical_json(dataset_manifest))
    return digest.hexdigest()


class AdapterRegistry:
    """Adapter versions under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def register(self, adapter_dir: Path, *, dataset_manifest: Mapping[str, Any], lineage: Mapping[str, Any]) -> str:
        """Store the adapter saved in ``adapter_dir`` (peft ``save_pretrained``); return its version."""
        version = adapter_hash(adapter_dir, dataset_manifest)
        target = self.root / version
        if target.is_dir():
            return version
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            for name in ADAPTER_FILES:
                shutil.copyfile(adapter_dir / name, staging / name)
            (staging / DATASET_MANIFEST).write_bytes(canonical_json(dataset_manifest))
            record = {
                "version": version,
                "dataset_hash": hashlib.sha256(canonical_json(dataset_manifest)).hexdigest(),
                "created": datetime.now(UTC).isoformat(),
                "state": "candidate",
                **lineage,
            }
            (staging / LINEAGE).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return version

    def fetch(self, version: str) -> Path:
        """The directory of ``version``, after checking its bytes still hash to its name."""
        path = self.root / version
        if not path.is_dir():
            raise RegistryError(f"adapter version {version!r} is not in the registry at {str(self.root)!r}")
        try:
            manifest = json.loads((path / DATASET_MANIFEST).read_bytes())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"adapter version {version!r} has no readable dataset manifest") from exc
        actual = adapter_hash(path, manifest)
        if actual != version:
            raise RegistryError(f"adapter version {version!r} is corrupt: its files hash to {actual!r}")
        return path

    def lineage(self, version: str) -> dict[str, Any]:
        """The lineage record of ``version``."""
        try:
            record: dict[str, Any] = json.loads((self.root / version / LINEAGE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"adapter version {version!r} has no readable lineage") from exc
        return record

    def versions(self) -> list[dict[str, Any]]:
        """Every version's lineage record, oldest first."""
        if not self.root.is_dir():
            return []
        records = [self.lineage(p.name) for p in self.root.iterdir() if (p / LINEAGE).is_file()]
        return sorted(records, key=lambda r: (str(r.get("created", "")), str(r["version"])))

    def set_state(self, version: str, state: str) -> dict[str, Any]:
        """Move ``version`` to ``state`` (lineage is outside the content hash, so the name holds)."""
        if state not in STATES:
            raise RegistryError(f"unknown state {state!r}; states are {', '.join(STATES)}")
        record = self.lineage(version) | {"state": state, "state_changed": datetime.now(UTC).isoformat()}
        _write_atomically(self.root / version / LINEAGE, record)
        return record

    def claim_refresh(self, key: str, *, forced_by: str | None = None) -> dict[str, Any]:
        """Record that the refresh ``key`` (its date) starts; refuse a second start unless forced.

        The record is created with O_EXCL in the registry's directory, which every worker shares,
        so two workers, or one worker before and after a restart, cannot both start one date.
        ``forced_by`` (an admin) re-runs a date that already ran; each forced start is appended.
        """
        if not _REFRESH_KEY.fullmatch(key):
            raise RegistryError(f"refresh key {key!r} is not a date (YYYY-MM-DD)")
        directory = self.root / "refreshes"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{key}.json"
        record: dict[str, Any] = {"key": key, "starts": [{"at": datetime.now(UTC).isoformat(), "forced_by": forced_by}]}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if forced_by is None:
                raise RegistryError(
                    f"the refresh of {key} already ran; an admin may force it again (flywheel refresh --now --force)"
                ) from None
            previous = self.refresh(key)
            record = previous | {"starts": [*previous.get("starts", []), record["starts"][0]], "outcome": None}
            _write_atomically(path, record)
            return record
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
        return record

    def finish_refresh(self, key: str, outcome: Mapping[str, Any]) -> dict[str, Any]:
        """Record how the refresh ``key`` ended (its outcome: a version, a no-op, a failure...)."""
        record = self.refresh(key) | {"outcome": dict(outcome), "finished": datetime.now(UTC).isoformat()}
        _write_atomically(self.root / "refreshes" / f"{key}.json", record)
        return record

    def refresh(self, key: str) -> dict[str, Any]:
        """The record of the refresh ``key``."""
        try:
            record: dict[str, Any] = json.loads((self.root / "refreshes" / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"no readable record of the refresh {key!r}") from exc
        return record


_REFRESH_KEY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _write_atomically(path: Path, record: Mapping[str, Any]) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(staging, path)
