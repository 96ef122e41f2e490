"""A content-addressed registry of LoRA adapter versions on disk, with lineage.

An adapter version is named by the SHA-256 of its weights, its config and the manifest of the
dataset it was trained on, so the same adapter is stored once and a gateway anywhere can fetch it
by that name and check, on load, that the bytes are what the name says. Layout::

    <root>/<version>/adapter_config.json
    <root>/<version>/adapter_model.safetensors
    <root>/<version>/dataset_manifest.json   canonical JSON, part of the hash
    <root>/<version>/lineage.json            parent, dataset hash, training, metrics, state ...

A version is written into a temporary directory and renamed into place, so a reader never sees
half an adapter. A registry given a :class:`RemoteSource` (a gateway on another machine: see
:mod:`feedback.registry_remote`) downloads a version it lacks into such a directory and installs it
only once its files hash to its name.

States follow the deployments (:func:`follow_deployment`): the challenger in shadow is ``shadow``,
in A/B ``canary``; the champion is ``champion``; a champion replaced by a promotion is ``retired``;
a challenger removed without promotion (rolled back) is ``rejected``; a challenger replaced by a
newer one is ``superseded``. Each change is appended to the lineage's ``history`` with the
deployment's id, revision and time, and a record no newer than a version's last change leaves it
alone, so replaying the deployments topic from its start changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from feedback.deployments import DeploymentState
from feedback.errors import RegistryError

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
DATASET_MANIFEST = "dataset_manifest.json"
LINEAGE = "lineage.json"
CONTENT_FILES = (*ADAPTER_FILES, DATASET_MANIFEST)  # what the version hashes; lineage changes and is not part of it
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


class RemoteSource(Protocol):
    """Where a registry gets a version it lacks (another machine's registry)."""

    def download(self, version: str, into: Path) -> None:
        """Write the :data:`CONTENT_FILES` of ``version`` into the directory ``into`` (RegistryError if it cannot)."""
        ...


class AdapterRegistry:
    """Adapter versions under one root directory; ``remote`` supplies the versions it lacks."""

    def __init__(self, root: Path, remote: RemoteSource | None = None) -> None:
        self.root = root
        self.remote = remote

    def register(self, adapter_dir: Path, *, dataset_manifest: Mapping[str, Any], lineage: Mapping[str, Any]) -> str:
        """Store the adapter saved in ``adapter_dir`` (peft ``save_pretrained``); return its version."""
        version = adapter_hash(adapter_dir, dataset_manifest)
        if (self.root / version).is_dir():
            return version
        with staged_version(self.root, version) as staging:
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
        return version

    def fetch(self, version: str) -> Path:
        """The directory of ``version``, after checking its bytes still hash to its name.

        A version not stored here comes from ``remote`` (if any): downloaded into a staging
        directory, installed only when its files hash to ``version``. A local hit never asks it.
        """
        path = self.root / version
        if not _VERSION.fullmatch(version):  # never a path to read, nor a name to ask a remote for
            raise RegistryError(f"adapter version {version!r} is not in the registry: not 64 hex digits")
        if not path.is_dir():
            if self.remote is None:
                raise RegistryError(f"adapter version {version!r} is not in the registry at {str(self.root)!r}")
            self._pull(version, self.remote)
        try:
            manifest = json.loads((path / DATASET_MANIFEST).read_bytes())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"adapter version {version!r} has no readable dataset manifest") from exc
        actual = adapter_hash(path, manifest)
        if actual != version:
            raise RegistryError(f"adapter version {version!r} is corrupt: its files hash to {actual!r}")
        return path

    def _pull(self, version: str, remote: RemoteSource) -> None:
        try:
            with staged_version(self.root, version) as staging:
                remote.download(version, staging)
                actual = adapter_hash(staging, json.loads((staging / DATASET_MANIFEST).read_bytes()))
                if actual != version:
                    raise RegistryError(
                        f"adapter version {version!r} was refused: the downloaded files hash to {actual!r} instead"
                    )
        except (OSError, ValueError) as exc:  # unwritable registry, or a manifest that is not JSON
            raise RegistryError(f"adapter version {version!r} could not be stored: {exc}") from exc

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

    def set_state(
        self, version: str, state: str, *, by: str = "system", deployment: DeploymentState | None = None
    ) -> dict[str, Any]:
        """Move ``version`` to ``state`` and append the change to its ``history``.

        Lineage is outside the content hash, so the name holds. A change made by ``deployment``
        records that deployment's author, time, id and revision.
        """
        if state not in STATES:
            raise RegistryError(f"unknown state {state!r}; states are {', '.join(STATES)}")
        change = {
            "state": state,
            "at": (deployment.updated_at if deployment else datetime.now(UTC)).isoformat(),
            "by": deployment.updated_by if deployment else by,
            "deployment_id": deployment.deployment_id if deployment else None,
            "revision": deployment.revision if deployment else None,
        }
        previous = self.lineage(version)
        record = previous | {
            "state": state,
            "state_changed": change["at"],
            "history": [*previous.get("history", []), change],
        }
        _write_atomically(self.root / version / LINEAGE, record)
        return record

    def claim_refresh(self, key: str, *, forced_by: str | None = None) -> dict[str, Any]:
        """Record that the refresh ``key`` (its date) starts; refuse a second start unless forced.

        The record is created with O_EXCL in the registry's directory, which every worker shares,
        so two workers, or one worker before and after a restart, cannot both start one date.
        ``forced_by`` (an admin) re-runs a date that already ran; each forced start is appended, and
        the outcome of the run before it moves to ``earlier_outcomes``.
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
            earlier = [*previous.get("earlier_outcomes", []), *filter(None, [previous.get("outcome")])]
            starts = [*previous.get("starts", []), record["starts"][0]]
            record = previous | {"starts": starts, "outcome": None, "earlier_outcomes": earlier}
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

    def refreshes(self) -> list[dict[str, Any]]:
        """Every refresh's record, by date."""
        directory = self.root / "refreshes"
        if not directory.is_dir():
            return []
        return [self.refresh(p.stem) for p in sorted(directory.glob("*.json")) if _REFRESH_KEY.fullmatch(p.stem)]


_REFRESH_KEY = re.compile(r"\d{4}-\d{2}-\d{2}")
_VERSION = re.compile(r"[0-9a-f]{64}")  # what adapter_hash names a version


def follow_deployment(
    registry: AdapterRegistry, before: DeploymentState | None, after: DeploymentState
) -> list[tuple[str, str]]:
    """Move the adapter versions named by the change ``before`` -> ``after`` to their states.

    Returns the (version, state) changes made. Bare base versions are skipped; a version that is
    not in the registry (or whose lineage cannot be read or written) is logged and skipped, never
    raised, since this runs inside a topic follower. A version already in its state, or whose
    history holds a change from ``after`` or a later record, is left alone, so replaying the topic
    gives the same states and history.
    """
    changes: list[tuple[str, str]] = []
    for version, state in deployment_states(before, after).items():
        if not _VERSION.fullmatch(version):  # a name no registry gives; never a path to read
            log.warning("deployment revision %s names %r, which is not an adapter version", after.revision, version)
            continue
        try:
            record = registry.lineage(version)
            if record.get("state") == state or _holds_later_change(record, after):
                continue
            registry.set_state(version, state, deployment=after)
        except (RegistryError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("deployment revision %s: the state of %s is not recorded: %s", after.revision, version, exc)
            continue
        changes.append((version, state))
    return changes


def _holds_later_change(record: Mapping[str, Any], deployment: DeploymentState) -> bool:
    """Whether the lineage's history holds a change made by ``deployment`` or a later record.

    Revisions order one deployments topic's records; the time also has to be later, so that a new
    topic, whose revisions start again from 1 while the registry is kept, still moves states.
    """
    return any(
        change.get("revision") is not None
        and change["revision"] >= deployment.revision
        and datetime.fromisoformat(change["at"]) >= deployment.updated_at
        for change in record.get("history", [])
    )


def deployment_states(before: DeploymentState | None, after: DeploymentState) -> dict[str, str]:
    """The registry state of each adapter version that the change ``before`` -> ``after`` names."""
    states: dict[str, str] = {}
    if before is not None:
        old_champion, old_challenger = adapter_of(before.champion), adapter_of(before.challenger)
        if old_champion:
            states[old_champion] = "retired"  # replaced as champion (only a promotion does that)
        if old_challenger:
            # Gone without promotion: rolled back, or replaced by a newer challenger.
            states[old_challenger] = "superseded" if after.challenger else "rejected"
    # What ``after`` still deploys wins over what ``before`` lost.
    champion, challenger = adapter_of(after.champion), adapter_of(after.challenger)
    if challenger:
        states[challenger] = "shadow" if after.mode == "shadow" else "canary"
    if champion:
        states[champion] = "champion"
    return states


def adapter_of(model_version: str | None) -> str | None:
    """The adapter version of ``base+adapter``; None for a bare base model (or no model)."""
    if model_version is None:
        return None
    return model_version.partition("+")[2] or None


@contextmanager
def staged_version(root: Path, version: str) -> Iterator[Path]:
    """A new directory under ``root`` to write ``version`` into, renamed to ``root/version`` if the block succeeds.

    The staging directory is removed whatever happens, so a failed or refused version leaves
    nothing behind. A version another writer installed meanwhile is kept: same name, same bytes.
    """
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        yield staging
        try:
            os.replace(staging, root / version)
        except OSError:
            if not (root / version).is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_atomically(path: Path, record: Mapping[str, Any]) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(staging, path)
