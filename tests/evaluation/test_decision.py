"""Decision gates on real synthetic experiments: advance, hold, promote and roll back, with reasons."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from experiment_data import synthetic_rows

from evaluation.config import ExperimentSettings
from evaluation.decision import harmful_gate, next_phase
from evaluation.report import build_report
from feedback.store import DuckDBStore

LENIENT = ExperimentSettings(
    sequential=False, max_error_rate_increase=0.05, max_negative_feedback_increase=0.2,
    max_latency_p95_increase=0.25, non_inferiority_margin=0.2, min_units=100, shadow_min_pairs=100,
)  # fmt: skip


def test_shadow_gate_advances_a_good_challenger(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(phase="shadow", shadow=True, units=100, seed=3))
    verdict = build_report(store, "exp-1", LENIENT).verdict
    assert (verdict.action, verdict.phase, verdict.next_phase) == ("advance", "shadow", "ab-5")
    assert verdict.inputs["pairs"] >= 100


def test_shadow_gate_rolls_back_a_slow_challenger(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(phase="shadow", shadow=True, units=100, lift=0.5, seed=3))
    verdict = build_report(store, "exp-1", LENIENT).verdict
    assert verdict.action == "roll back"
    assert verdict.reasons[0].startswith("p95 latency +")


def test_shadow_gate_holds_without_enough_pairs(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(phase="shadow", shadow=True, units=10, seed=3))
    verdict = build_report(store, "exp-1", LENIENT).verdict
    assert verdict.action == "hold"
    assert "fewer than 100" in verdict.reasons[0]


def test_srm_holds_the_step(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(phase="ab-10", share=0.3, units=1000, seed=4))
    report = build_report(store, "exp-1", LENIENT)
    assert report.phases[0].srm is not None
    assert report.phases[0].srm.mismatch
    assert report.verdict.action == "hold"
    assert report.verdict.reasons[0].startswith("sample-ratio mismatch")


def test_minimum_sample_holds_the_step(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(phase="ab-50", units=120, seed=4))
    verdict = build_report(store, "exp-1", LENIENT).verdict
    assert verdict.action == "hold"
    assert verdict.reasons[0].startswith("fewer than 100 units in")


def test_a_sound_last_step_promotes_and_a_slow_one_rolls_back(experiment_store: Callable[..., DuckDBStore]) -> None:
    good = experiment_store(synthetic_rows(phase="ab-50", units=3000, per_unit=4, seed=5))
    verdict = build_report(good, "exp-1", LENIENT).verdict
    assert (verdict.action, verdict.next_phase) == ("promote", None), verdict.reasons
    slow = experiment_store(synthetic_rows(phase="ab-25", share=0.25, units=3000, per_unit=4, lift=0.6, seed=5))
    verdict = build_report(slow, "exp-1", LENIENT).verdict
    assert verdict.action == "roll back"
    assert any(r.startswith("p95 latency change") for r in verdict.reasons)
    assert set(verdict.inputs) == {"error_rate", "negative_feedback_rate", "latency_p95", "primary"}


def test_an_early_step_advances(experiment_store: Callable[..., DuckDBStore]) -> None:
    store = experiment_store(synthetic_rows(phase="ab-25", share=0.25, units=3000, per_unit=4, seed=6))
    verdict = build_report(store, "exp-1", LENIENT).verdict
    assert (verdict.action, verdict.next_phase) == ("advance", "ab-50"), verdict.reasons


@pytest.mark.parametrize(
    ("lo", "hi", "gate"), [(0.02, 0.05, "roll back"), (-0.01, 0.005, "pass"), (-0.01, 0.03, "hold")]
)
def test_harmful_gate(lo: float, hi: float, gate: str) -> None:
    assert harmful_gate(lo, hi, 0.01) == gate


def test_next_phase() -> None:
    settings = ExperimentSettings()
    assert [next_phase(p, settings) for p in ("shadow", "ab-5", "ab-25", "ab-50")] == ["ab-5", "ab-10", "ab-50", None]
