"""``flywheel models list|show`` as a user runs it, over a registry on disk."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import flywheel

from feedback.registry import AdapterRegistry


def registry_with_two_versions(tmp_path: Path) -> tuple[Path, str, str]:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 2}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")  # the registry hashes bytes; it loads nothing
    registry = AdapterRegistry(tmp_path / "registry")
    first = registry.register(adapter, dataset_manifest={"day": 1}, lineage={"parent": None})
    second = registry.register(adapter, dataset_manifest={"day": 2}, lineage={"parent": first})
    registry.set_state(first, "champion")
    return registry.root, first, second


def test_models_list_and_show(tmp_path: Path) -> None:
    root, first, second = registry_with_two_versions(tmp_path)

    listed = flywheel("models", "list", "--registry", str(root), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["version"], r["state"], r["parent"]) for r in json.loads(listed.stdout)] == [
        (first, "champion", None),
        (second, "candidate", first),
    ]
    table = flywheel("models", "list", "--registry", str(root))
    assert first[:12] in table.stdout
    assert "candidate" in table.stdout

    shown = flywheel("models", "show", second, "--registry", str(root))
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["parent"] == first

    unknown = flywheel("models", "show", "f" * 64, "--registry", str(root))
    assert unknown.returncode == 1
    assert "no readable lineage" in unknown.stderr
