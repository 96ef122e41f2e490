"""The content-addressed adapter registry: hashing, idempotent registration, lineage, verified fetch."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from feedback.errors import RegistryError
from feedback.model.runtime import ModelRuntime
from feedback.registry import AdapterRegistry

MANIFEST = {"rows": 12, "sha256": "ab" * 32}


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    runtime = ModelRuntime.load(model_dir)
    config = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        get_peft_model(runtime.model, config).save_pretrained(out)
    return out


def expected_version(adapter_dir: Path) -> str:
    """The documented layout, hashed here independently of the registry's code."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update(name.encode() + b"\0" + (adapter_dir / name).read_bytes())
    digest.update(b"dataset_manifest.json\0" + json.dumps(MANIFEST, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def test_register_names_the_adapter_by_its_content(tmp_path: Path, adapter_dir: Path) -> None:
    registry = AdapterRegistry(tmp_path / "registry")
    version = registry.register(
        adapter_dir, dataset_manifest=MANIFEST, lineage={"parent": None, "metrics": {"loss": 1.5}}
    )
    assert version == expected_version(adapter_dir)
    assert registry.register(adapter_dir, dataset_manifest=MANIFEST, lineage={}) == version  # stored once
    assert registry.register(adapter_dir, dataset_manifest={"rows": 13}, lineage={}) != version
    lineage = registry.lineage(version)
    assert (lineage["version"], lineage["state"], lineage["parent"], lineage["metrics"]) == (
        version,
        "candidate",
        None,
        {"loss": 1.5},
    )
    assert (
        lineage["dataset_hash"]
        == hashlib.sha256(json.dumps(MANIFEST, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    )
    assert (registry.fetch(version) / "adapter_model.safetensors").is_file()
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".staging")]


def test_fetch_refuses_corrupt_and_unknown_versions(tmp_path: Path, adapter_dir: Path) -> None:
    registry = AdapterRegistry(tmp_path / "registry")
    version = registry.register(adapter_dir, dataset_manifest=MANIFEST, lineage={})
    with (registry.root / version / "adapter_model.safetensors").open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(RegistryError, match=f"adapter version '{version}' is corrupt: its files hash to"):
        registry.fetch(version)
    with pytest.raises(RegistryError, match="adapter version 'nope' is not in the registry"):
        registry.fetch("nope")


def test_a_directory_without_an_adapter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"holds no adapter_config\.json"):
        AdapterRegistry(tmp_path / "r").register(tmp_path, dataset_manifest={}, lineage={})


def test_a_refresh_date_runs_once_unless_an_admin_forces_it(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "registry")
    first = registry.claim_refresh("2026-11-29")
    assert [s["forced_by"] for s in first["starts"]] == [None]

    again = AdapterRegistry(tmp_path / "registry")  # another worker, or this one after a restart
    with pytest.raises(RegistryError, match=r"the refresh of 2026-11-29 already ran; an admin may force it again"):
        again.claim_refresh("2026-11-29")

    registry.finish_refresh("2026-11-29", {"status": "no-op", "reason": "empty selection"})
    forced = again.claim_refresh("2026-11-29", forced_by="admin")
    assert [s["forced_by"] for s in forced["starts"]] == [None, "admin"]
    assert forced["outcome"] is None  # the forced run's outcome is still to come
    assert registry.claim_refresh("2026-11-30")["key"] == "2026-11-30"
    with pytest.raises(RegistryError, match="is not a date"):
        registry.claim_refresh("../escape")


def test_versions_are_listed_oldest_first_and_change_state(tmp_path: Path, adapter_dir: Path) -> None:
    registry = AdapterRegistry(tmp_path / "registry")
    assert registry.versions() == []
    first = registry.register(adapter_dir, dataset_manifest={"rows": 1}, lineage={"parent": None})
    second = registry.register(adapter_dir, dataset_manifest={"rows": 2}, lineage={"parent": first})

    assert [(r["version"], r["state"], r["parent"]) for r in registry.versions()] == [
        (first, "candidate", None),
        (second, "candidate", first),
    ]
    assert registry.set_state(second, "shadow")["state"] == "shadow"
    assert registry.lineage(second)["state"] == "shadow"
    assert registry.fetch(second).name == second  # a state change leaves the content hash intact
    with pytest.raises(RegistryError, match="unknown state 'live'"):
        registry.set_state(second, "live")
