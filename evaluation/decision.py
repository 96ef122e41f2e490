"""The decision engine's gates: a pure function of an analysis and the settings.

Verdicts: ``advance`` (to the next ramp step), ``hold`` (keep collecting), ``promote`` (the
challenger becomes champion), ``roll back`` (retire the challenger). Each carries its reasons and
the numbers it used.

Leaving shadow (what shadow can measure, on paired responses): hold below ``shadow_min_pairs``;
roll back when the challenger's error rate exceeds the champion's by more than
``max_error_rate_increase``, its p95 latency is more than ``max_latency_p95_increase`` (relative)
higher, or the mean ROUGE-L similarity is below ``shadow_min_agreement``; otherwise advance.

Each A/B step, in order:
1. Sample-ratio mismatch (chi-square p below ``srm_threshold``): hold; the data cannot be trusted.
2. Fewer than ``min_units`` units in an arm: hold.
3. Guardrails (error rate and thumbs-down rate as absolute lifts, p95 latency as a relative lift;
   each has a tolerance): with the interval ``[lo, hi]`` of the harmful change (the always-valid
   sequence when ``sequential``, else the fixed interval), ``lo > tolerance`` rolls back,
   ``hi <= tolerance`` passes, anything else holds.
4. Primary metric, non-inferiority on the relative lift with margin ``m``: the interval of the
   beneficial change entirely below ``-m`` rolls back, entirely above ``-m`` passes, else hold.
All passed: promote after the last ramp step, else advance to the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from evaluation.config import ExperimentSettings
from evaluation.sequential import ConfidenceSequence
from evaluation.significance import Moments, TestResult

if TYPE_CHECKING:
    from evaluation.report import MetricResult, PhaseReport
    from evaluation.shadow import ShadowAnalysis

Action = Literal["advance", "hold", "promote", "roll back"]
Gate = Literal["pass", "hold", "roll back"]


@dataclass(frozen=True)
class Verdict:
    """What to do next, why, and on which numbers."""

    action: Action
    phase: str | None
    next_phase: str | None
    reasons: list[str]
    inputs: dict[str, Any] = field(default_factory=dict)


def next_phase(phase: str, settings: ExperimentSettings) -> str | None:
    """The ramp step after ``phase`` (``shadow`` leads to the first step); None after the last."""
    if phase == "shadow":
        return f"ab-{settings.ramp[0]}"
    percent = int(phase.removeprefix("ab-"))
    later = [p for p in settings.ramp if p > percent]
    return f"ab-{later[0]}" if later else None


def decide(phase: PhaseReport | None, shadow: ShadowAnalysis | None, settings: ExperimentSettings) -> Verdict:
    """The verdict for the experiment's current (latest) phase."""
    if phase is None or phase.phase == "shadow":
        if shadow is None:
            return Verdict("hold", None if phase is None else phase.phase, None, ["no data to decide on yet"])
        return decide_shadow(shadow, settings)
    if phase.expected_split is None:
        return Verdict("hold", phase.phase, None, [f"phase {phase.phase} is not an A/B step; nothing to decide"])
    return decide_ab(phase, settings)


def decide_shadow(shadow: ShadowAnalysis, settings: ExperimentSettings) -> Verdict:
    """The gate for leaving shadow."""
    error_increase = shadow.challenger_error_rate - shadow.champion_error_rate
    base = shadow.champion_latency_p95
    p95_increase = shadow.challenger_latency_p95 / base - 1 if base else 0.0
    inputs = {"pairs": shadow.pairs, "error_rate_increase": error_increase, "latency_p95_increase": p95_increase,
              "mean_similarity": shadow.mean_similarity}  # fmt: skip
    if shadow.pairs < settings.shadow_min_pairs:
        return Verdict(
            "hold", "shadow", None, [f"{shadow.pairs} paired responses, fewer than {settings.shadow_min_pairs}"], inputs
        )
    reasons = []
    if error_increase > settings.max_error_rate_increase:
        reasons.append(
            f"error rate {error_increase:+.4f} above the champion's (tolerance {settings.max_error_rate_increase})"
        )
    if p95_increase > settings.max_latency_p95_increase:
        reasons.append(f"p95 latency {p95_increase:+.1%} (tolerance {settings.max_latency_p95_increase:.0%})")
    if shadow.mean_similarity < settings.shadow_min_agreement:
        reasons.append(f"mean ROUGE-L {shadow.mean_similarity:.3f} below {settings.shadow_min_agreement}")
    if reasons:
        return Verdict("roll back", "shadow", None, reasons, inputs)
    return Verdict("advance", "shadow", next_phase("shadow", settings), ["shadow guardrails passed"], inputs)


def harmful_gate(lo: float, hi: float, tolerance: float) -> Gate:
    """Gate on the interval of a harmful change against its tolerance."""
    if lo > tolerance:
        return "roll back"
    return "pass" if hi <= tolerance else "hold"


def interval(result: TestResult, sequential: TestResult | None) -> tuple[float, float]:
    """The interval a gate uses: the always-valid one when given, else the fixed one."""
    return (sequential or result).ci


def decide_ab(phase: PhaseReport, settings: ExperimentSettings) -> Verdict:
    """The gate of one A/B step."""
    if phase.srm is not None and phase.srm.mismatch:
        srm = phase.srm
        reason = (
            f"sample-ratio mismatch: units {srm.observed}, expected shares {srm.expected_share}, "
            f"p = {srm.p_value:.2e} < {srm.threshold}"
        )
        return Verdict("hold", phase.phase, None, [reason], {"srm_p_value": phase.srm.p_value})
    if phase.below_minimum:
        return Verdict(
            "hold",
            phase.phase,
            None,
            [f"fewer than {settings.min_units} units in {', '.join(phase.below_minimum)}"],
            {"units": phase.units},
        )
    metrics = {m.name: m for m in phase.metrics}
    gates: dict[str, tuple[Gate, str]] = {}
    for name, tolerance in (
        ("error_rate", settings.max_error_rate_increase),
        ("negative_feedback_rate", settings.max_negative_feedback_increase),
    ):
        if name in metrics:
            lo, hi = _absolute_interval(metrics[name], settings)
            gates[name] = (
                harmful_gate(lo, hi, tolerance),
                f"{name} change in [{lo:+.4f}, {hi:+.4f}], tolerance {tolerance:+.4f}",
            )
    p95 = next((q for q in phase.quantiles if q.method == "quantile-p95"), None)
    if p95 is not None and p95.error is None:
        lo, hi = _sequential_quantile(p95, settings)
        gates["latency_p95"] = (
            harmful_gate(lo, hi, settings.max_latency_p95_increase),
            f"p95 latency change in [{lo:+.2%}, {hi:+.2%}], tolerance {settings.max_latency_p95_increase:+.0%}",
        )
    primary = metrics.get(settings.primary_metric)
    if primary is None:
        gates["primary"] = ("hold", f"primary metric {settings.primary_metric} is not in this report")
    else:
        lo, hi = interval(primary.relative, primary.sequential_relative if settings.sequential else None)
        if not primary.higher_is_better:
            lo, hi = -hi, -lo
        margin = -settings.non_inferiority_margin
        gate: Gate = "roll back" if hi < margin else "pass" if lo > margin else "hold"
        gates["primary"] = (gate, f"{primary.name} relative change in [{lo:+.2%}, {hi:+.2%}] vs margin {margin:+.2%}")
    inputs = {name: text for name, (_, text) in gates.items()}
    actions: tuple[Action, ...] = ("roll back", "hold")
    for action in actions:
        failing = [text for gate, text in gates.values() if gate == action]
        if failing:
            return Verdict(action, phase.phase, None, failing, inputs)
    upcoming = next_phase(phase.phase, settings)
    reasons = ["SRM, minimum sample, guardrails and non-inferiority passed"]
    return Verdict("advance" if upcoming else "promote", phase.phase, upcoming, reasons, inputs)


def _absolute_interval(metric: MetricResult, settings: ExperimentSettings) -> tuple[float, float]:
    lo, hi = interval(metric.absolute, metric.sequential_absolute if settings.sequential else None)
    return (lo, hi) if not metric.higher_is_better else (-hi, -lo)


def _sequential_quantile(result: TestResult, settings: ExperimentSettings) -> tuple[float, float]:
    if not settings.sequential:
        return result.ci
    i = result.inputs
    a, b = Moments(int(i["n_a"]), i["mean_a"], i["var_a"]), Moments(int(i["n_b"]), i["mean_b"], i["var_b"])
    return ConfidenceSequence(settings.alpha, settings.sequential_tuning).test(a, b, relative=True).ci
