"""The content-addressed adapter registry: hashing, idempotent registration, lineage, verified fetch,
and states that follow the deployments."""

from __future__ import annotations

import hashlib
import json
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from feedback.deployments import DeploymentState, initial_state, promote, roll_back, set_challenger, set_mode
from feedback.errors import RegistryError
from feedback.model.runtime import ModelRuntime
from feedback.registry import AdapterRegistry, follow_deployment

MANIFEST = {"rows": 12, "sha256": "ab" * 32}
BASE = "smollm2-135m-instruct"


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
    assert registry.set_state(second, "rejected", by="refresh")["state"] == "rejected"
    assert registry.lineage(second)["state"] == "rejected"
    assert [(c["state"], c["by"], c["revision"]) for c in registry.lineage(second)["history"]] == [
        ("shadow", "system", None),
        ("rejected", "refresh", None),
    ]
    assert registry.fetch(second).name == second  # a state change leaves the content hash intact
    with pytest.raises(RegistryError, match="unknown state 'live'"):
        registry.set_state(second, "live")


def two_versions(tmp_path: Path, adapter_dir: Path) -> tuple[AdapterRegistry, str, str]:
    """Two versions of one adapter's weights, told apart by their dataset manifests."""
    registry = AdapterRegistry(tmp_path / "registry")
    first = registry.register(adapter_dir, dataset_manifest={"day": 1}, lineage={"parent": None})
    second = registry.register(adapter_dir, dataset_manifest={"day": 2}, lineage={"parent": first})
    return registry, first, second


def follow_all(registry: AdapterRegistry, states: list[DeploymentState]) -> list[list[tuple[str, str]]]:
    """Follow the records in order, as a follower reading the deployments topic from its start does."""
    return [follow_deployment(registry, before, after) for before, after in zip([None, *states], states, strict=False)]


def history(registry: AdapterRegistry, version: str) -> list[tuple[str, str, int]]:
    return [(c["state"], c["by"], c["revision"]) for c in registry.lineage(version)["history"]]


def ramp_and_promote_twice(first: str, second: str) -> list[DeploymentState]:
    s0 = initial_state(BASE, [5, 10, 25, 50])
    s1 = set_challenger(s0, f"{BASE}+{first}", by="refresh")
    s2 = set_mode(s1, "ab", by="decision-engine", step=0)
    s3 = set_mode(s2, "ab", by="decision-engine", step=1)
    s4 = promote(s3, by="admin")
    s5 = set_challenger(s4, f"{BASE}+{second}", by="refresh")
    s6 = set_mode(s5, "ab", by="decision-engine", step=0)
    return [s0, s1, s2, s3, s4, s5, s6, promote(s6, by="decision-engine")]


def test_states_follow_a_shadow_an_ab_ramp_and_promotions(tmp_path: Path, adapter_dir: Path) -> None:
    registry, first, second = two_versions(tmp_path, adapter_dir)
    states = ramp_and_promote_twice(first, second)

    assert follow_all(registry, states) == [
        [],  # the bare base model alone: nothing in the registry
        [(first, "shadow")],
        [(first, "canary")],
        [],  # a higher ramp step keeps it a canary
        [(first, "champion")],  # the bare base it replaced is not in the registry
        [(second, "shadow")],
        [(second, "canary")],
        [(first, "retired"), (second, "champion")],
    ]
    assert history(registry, first) == [
        ("shadow", "refresh", 1),
        ("canary", "decision-engine", 2),
        ("champion", "admin", 4),
        ("retired", "decision-engine", 7),
    ]
    assert history(registry, second) == [
        ("shadow", "refresh", 5),
        ("canary", "decision-engine", 6),
        ("champion", "decision-engine", 7),
    ]
    last = registry.lineage(second)
    assert (last["state"], last["history"][-1]["deployment_id"]) == ("champion", states[-1].deployment_id)
    assert last["state_changed"] == states[-1].updated_at.isoformat()


def test_a_rolled_back_challenger_is_rejected(tmp_path: Path, adapter_dir: Path) -> None:
    registry, first, second = two_versions(tmp_path, adapter_dir)
    s0 = initial_state(f"{BASE}+{first}", [5, 10])  # an adapter champion from the start
    s1 = set_challenger(s0, f"{BASE}+{second}", by="refresh")
    s2 = set_mode(s1, "ab", by="admin", step=1)
    assert follow_all(registry, [s0, s1, s2, roll_back(s2, by="decision-engine")]) == [
        [(first, "champion")],
        [(second, "shadow")],
        [(second, "canary")],
        [(second, "rejected")],
    ]
    assert history(registry, second) == [
        ("shadow", "refresh", 1),
        ("canary", "admin", 2),
        ("rejected", "decision-engine", 3),
    ]
    assert registry.lineage(first)["state"] == "champion"


def test_a_shadow_challenger_replaced_by_a_newer_one_is_superseded(tmp_path: Path, adapter_dir: Path) -> None:
    registry, first, second = two_versions(tmp_path, adapter_dir)
    s1 = set_challenger(initial_state(BASE, [5]), f"{BASE}+{first}", by="refresh")
    s2 = set_challenger(s1, f"{BASE}+{second}", by="refresh")
    assert follow_all(registry, [s1, s2]) == [[(first, "shadow")], [(first, "superseded"), (second, "shadow")]]
    assert [(r["version"], r["state"]) for r in registry.versions()] == [(first, "superseded"), (second, "shadow")]


def test_replaying_the_topic_changes_nothing(tmp_path: Path, adapter_dir: Path) -> None:
    registry, first, second = two_versions(tmp_path, adapter_dir)
    states = ramp_and_promote_twice(first, second)
    follow_all(registry, states)
    after_first_pass = registry.versions()

    assert follow_all(registry, states) == [[] for _ in states]  # a follower restarted from the topic's start
    assert follow_deployment(registry, None, states[-1]) == []  # or from a compacted topic: the last record only
    assert registry.versions() == after_first_pass
    assert [r["state"] for r in after_first_pass] == ["retired", "champion"]


def test_a_new_deployments_topic_still_moves_states(tmp_path: Path, adapter_dir: Path) -> None:
    registry, first, second = two_versions(tmp_path, adapter_dir)
    states = ramp_and_promote_twice(first, second)
    follow_all(registry, states)  # first retired at revision 7, second champion

    # The broker's data was wiped and the registry kept: revisions start again, later in time.
    fresh = initial_state(f"{BASE}+{second}", [5]).model_copy(update={"updated_at": states[-1].updated_at})
    again = set_challenger(fresh, f"{BASE}+{first}", by="admin")
    again = again.model_copy(update={"updated_at": states[-1].updated_at + timedelta(days=1)})
    assert again.revision == 1
    assert follow_all(registry, [fresh, again]) == [[], [(first, "shadow")]]
    assert history(registry, first)[-2:] == [("retired", "decision-engine", 7), ("shadow", "admin", 1)]


def test_versions_outside_the_registry_are_skipped(
    tmp_path: Path, adapter_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry, first, _second = two_versions(tmp_path, adapter_dir)
    missing = "f" * 64
    s0 = initial_state(BASE, [5])
    s1 = set_challenger(s0, f"{BASE}+{missing}", by="admin")
    s2 = set_challenger(s1, f"{BASE}+../{first}", by="admin")
    s3 = set_challenger(s2, "another-base", by="admin")  # a bare base on its own instance
    assert follow_all(registry, [s0, s1, s2, s3]) == [[], [], [], []]
    assert [r["state"] for r in registry.versions()] == ["candidate", "candidate"]
    assert (
        f"deployment revision 1: the state of {missing} is not recorded: "
        f"adapter version '{missing}' has no readable lineage"
    ) in caplog.text
    assert f"names '../{first}', which is not an adapter version" in caplog.text
