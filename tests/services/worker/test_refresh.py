"""The refresh end to end on real parts: DuckDB file, Kafka deployments topic, the model, peft training, the gate.

Traffic is written into the store as the sink would (catalogue questions answered by the champion);
the refresh selects, curates, trains in a subprocess, gates, registers and deploys through the
deployments topic, which the worker's follower reads back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_events import catalogue_answers

from feedback import catalogue
from feedback.deployments import promote, publish_state, roll_back, set_challenger, set_mode
from feedback.model.runtime import model_name
from feedback.registry import AdapterRegistry
from feedback.settings import KafkaSettings, Settings
from feedback.store import DuckDBStore
from services.worker.app import Deployments
from services.worker.refresh import Refresher, RefreshRefused

KEY = "2026-11-29"
# Small enough for two shared cores: a few steps of rank 4, a handful of held-out and golden examples.
TRAINING = {"rank": 4, "alpha": 8, "batch_size": 4, "max_steps": 6, "learning_rate": 1e-3, "threads": 1}
# the orchestration is under test here, the gate's checks in tests/evaluation/test_gate.py: a six-step adapter
# learns the answers' form more than the prompts, so the prompt control would refuse it on six examples
GATE = {"heldout_cap": 6, "max_new_tokens": 40, "prompt_control": False}


def make_settings(tmp_path: Path, kafka: KafkaSettings, model_dir: Path, **sections: Any) -> Settings:
    golden = tmp_path / "golden.jsonl"
    catalogue.write_jsonl(catalogue.golden_examples()[:6], golden)
    base: dict[str, Any] = {
        "kafka": kafka,
        "model": {"cache_dir": model_dir.parent, "registry_dir": tmp_path / "registry"},
        "refresh": {"work_dir": tmp_path / "refreshes", "min_train_examples": 8},
        "selection": {"replay_share": 0.0, "strata": 1, "confidence_threshold": 0.5},
        "training": TRAINING,
        "curation": {"held_out_share": 0.3},
        "gate": GATE | {"golden_path": golden},
    }
    return Settings(**(base | sections))


@pytest.fixture
def deployments(kafka_isolated: KafkaSettings, tmp_path: Path, model_dir: Path) -> Iterator[Deployments]:
    follower = Deployments(make_settings(tmp_path, kafka_isolated, model_dir))
    follower.watcher.start()
    assert follower.watcher.caught_up.wait(30)
    yield follower
    follower.watcher.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "refresh.duckdb")
    yield s
    s.close()


def answer_questions(store: DuckDBStore, champion: str, count: int, *, seed: int = 5, offset: int = 0) -> None:
    store.write_batch(catalogue_answers(champion, count, seed=seed, offset=offset))


def used(store: DuckDBStore) -> int:
    return int(store.query("SELECT count(*) AS n FROM training_uses")[0]["n"])


def test_a_refresh_trains_gates_registers_and_deploys_its_candidate_as_the_shadow_challenger(
    tmp_path: Path, kafka_isolated: KafkaSettings, model_dir: Path, store: DuckDBStore, deployments: Deployments
) -> None:
    settings = make_settings(tmp_path, kafka_isolated, model_dir)
    base = model_name(model_dir)
    answer_questions(store, base, 48)
    refresher = Refresher(settings, store, deployment=deployments.current, publish=deployments.publish, echo=None)

    outcome = refresher.run(KEY)

    assert outcome["status"] == "deployed", outcome["message"]
    version = outcome["version"]
    assert outcome["model_version"] == f"{base}+{version}"
    assert outcome["selection"]["confidence_selected"] == 48
    files, stages = outcome["curation"]["files"], outcome["curation"]["stages"]
    assert stages[0]["in"] == 48
    assert (
        files["train"]["examples"] + files["held_out"]["examples"]
        == stages[-1]["out"]
        == 48 - sum(s["in"] - s["out"] for s in stages)
    )
    assert outcome["training"]["steps"] == 6
    curve = outcome["training"]["loss_curve"]
    assert (len(curve), curve[0], curve[-1]) == (6, outcome["training"]["first_loss"], outcome["training"]["last_loss"])
    assert outcome["gate"]["passed"] is True
    assert outcome["gate"]["heldout"]["candidate_loss"] < outcome["gate"]["heldout"]["champion_loss"]
    state = deployments.current()
    assert (state.champion, state.challenger, state.mode, state.updated_by) == (
        base,
        outcome["model_version"],
        "shadow",
        "refresh",
    )
    registry = AdapterRegistry(settings.model.registry_dir)
    lineage = registry.lineage(version)
    assert (lineage["state"], lineage["parent"], lineage["refresh"], lineage["gate_passed"]) == (
        "shadow",
        None,
        KEY,
        True,
    )
    assert registry.fetch(version).is_dir()
    assert used(store) == 48
    ledger = registry.refresh(KEY)
    assert ledger["outcome"]["status"] == "deployed"
    assert ledger["outcome"]["window_until"] == outcome["until"]

    # the same date again: refused without an admin; forced, it finds nothing new since the last window
    with pytest.raises(RefreshRefused, match="already ran"):
        refresher.run(KEY)
    forced = refresher.run(KEY, forced_by="admin")
    assert (forced["status"], forced["run"], forced["since"]) == ("no-op", f"{KEY}.2", outcome["until"])
    assert [s["forced_by"] for s in registry.refresh(KEY)["starts"]] == [None, "admin"]

    # the candidate is promoted; its adapter's bytes then rot on disk: the next refresh refuses to train from it
    publish_state(kafka_isolated, promote(deployments.current(), by="admin"))
    assert deployments.watcher.wait_for(state.revision + 1, 30)
    weights = registry.root / version / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    answer_questions(store, f"{base}+{version}", 12, seed=6, offset=100)
    corrupt = refresher.run("2026-11-30")
    assert corrupt["status"] == "failed"
    assert f"adapter version {version!r} is corrupt" in corrupt["message"]
    assert "window_until" not in corrupt
    assert [r["version"] for r in registry.versions()] == [version]


def test_nothing_to_select_is_a_recorded_no_op_that_publishes_nothing(
    tmp_path: Path, kafka_isolated: KafkaSettings, model_dir: Path, store: DuckDBStore, deployments: Deployments
) -> None:
    settings = make_settings(tmp_path, kafka_isolated, model_dir)
    refresher = Refresher(settings, store, deployment=deployments.current, publish=deployments.publish, echo=None)

    outcome = refresher.run(KEY)

    assert (outcome["status"], outcome["selection"]["examples"]) == ("no-op", 0)
    assert outcome["message"].startswith("nothing to train on")
    assert AdapterRegistry(settings.model.registry_dir).refresh(KEY)["outcome"]["status"] == "no-op"
    assert deployments.watcher.state.revision == 0
    assert not (settings.refresh.work_dir / KEY).exists()


def test_a_training_run_that_cannot_finish_fails_cleanly_and_leaves_its_data_for_the_next_refresh(
    tmp_path: Path, kafka_isolated: KafkaSettings, model_dir: Path, store: DuckDBStore, deployments: Deployments
) -> None:
    broken = TRAINING | {"target_modules": ["no_such_module"], "restarts": 0}
    settings = make_settings(tmp_path, kafka_isolated, model_dir, training=broken)
    base = model_name(model_dir)
    answer_questions(store, base, 40)
    refresher = Refresher(settings, store, deployment=deployments.current, publish=deployments.publish, echo=None)

    outcome = refresher.run(KEY)

    assert outcome["status"] == "failed"
    assert outcome["message"].startswith("training failed, nothing registered, the champion is untouched")
    assert "window_until" not in outcome
    assert AdapterRegistry(settings.model.registry_dir).versions() == []
    assert used(store) == 0
    assert deployments.watcher.state.revision == 0
    # the next refresh sees the same interactions again
    retry = Refresher(settings, store, deployment=deployments.current, publish=deployments.publish, echo=None)
    assert retry.dry_run()["selection"]["confidence_selected"] == 40


def test_a_dry_run_reports_the_selection_curation_and_plan_and_changes_nothing(
    tmp_path: Path, kafka_isolated: KafkaSettings, model_dir: Path, store: DuckDBStore, deployments: Deployments
) -> None:
    settings = make_settings(tmp_path, kafka_isolated, model_dir)
    answer_questions(store, model_name(model_dir), 30)
    refresher = Refresher(settings, store, deployment=deployments.current, publish=deployments.publish, echo=None)

    outcome = refresher.dry_run()

    assert outcome["status"] == "dry-run"
    files, stages = outcome["curation"]["files"], outcome["curation"]["stages"]
    assert stages[0]["in"] == 30
    assert (
        files["train"]["examples"] + files["held_out"]["examples"]
        == stages[-1]["out"]
        == 30 - sum(s["in"] - s["out"] for s in stages)
    )
    assert outcome["plan"]["train_examples"] == files["train"]["examples"]
    assert outcome["plan"]["steps"] == 6  # max_steps
    assert outcome["plan"]["parent_adapter"] is None
    assert used(store) == 0
    assert AdapterRegistry(settings.model.registry_dir).refreshes() == []
    assert json.loads(json.dumps(outcome)) == outcome


def test_the_follower_names_the_configured_base_before_any_deployment_record(
    model_dir: Path, deployments: Deployments
) -> None:
    state = deployments.current()
    assert (state.champion, state.challenger, state.revision) == (model_name(model_dir), None, 0)


def register_waiting(registry: AdapterRegistry, tmp_path: Path, name: str, parent: str | None) -> str:
    """A candidate that passed its gate and waits (its files are bytes only: nothing loads them here)."""
    adapter = tmp_path / name
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"name": name}), encoding="utf-8")
    (adapter / "adapter_model.safetensors").write_bytes(name.encode())
    lineage = {"base": "smollm2-135m-instruct", "parent": parent, "gate_passed": True}
    return registry.register(adapter, dataset_manifest={"name": name}, lineage=lineage)


def test_when_an_ab_ramp_ends_the_newest_waiting_candidate_goes_next_and_older_ones_are_superseded(
    tmp_path: Path, kafka_isolated: KafkaSettings, model_dir: Path, store: DuckDBStore, deployments: Deployments
) -> None:
    settings = make_settings(tmp_path, kafka_isolated, model_dir)
    refresher = Refresher(settings, store, deployment=deployments.current, publish=deployments.publish, echo=None)
    registry = refresher.registry
    base = model_name(model_dir)
    in_ramp = deployments.publish(set_mode(set_challenger(deployments.current(), f"{base}+x", by="t"), "ab", by="t"))
    older = register_waiting(registry, tmp_path, "older", None)
    newer = register_waiting(registry, tmp_path, "newer", None)

    assert refresher.deploy_waiting() is None  # the ramp still runs
    deployments.publish(roll_back(in_ramp, by="t"))
    assert refresher.deploy_waiting() == newer

    state = deployments.current()
    assert (state.challenger, state.mode, state.updated_by) == (f"{base}+{newer}", "shadow", "refresh")
    assert [registry.lineage(v)["state"] for v in (older, newer)] == ["superseded", "shadow"]


def test_a_waiting_candidate_trained_from_a_champion_since_replaced_is_superseded(
    tmp_path: Path, kafka_isolated: KafkaSettings, model_dir: Path, store: DuckDBStore, deployments: Deployments
) -> None:
    settings = make_settings(tmp_path, kafka_isolated, model_dir)
    refresher = Refresher(settings, store, deployment=deployments.current, publish=deployments.publish, echo=None)
    stale = register_waiting(refresher.registry, tmp_path, "stale", "an-adapter-promoted-since")

    assert refresher.deploy_waiting() is None
    assert refresher.registry.lineage(stale)["state"] == "superseded"
    assert deployments.watcher.state.revision == 0
