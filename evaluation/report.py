"""An experiment's full report: every phase's metrics, guards and tests, the shadow analysis, the verdict.

Everything moment-based comes from one grouped SQL scan per experiment (``metric_moments``, over
the sink's per-unit rollup when it is current) plus one cohort scan for the timeline and one CUPED
scan per phase for every metric (``cuped`` repeats the primary metric's); quantiles are exact SQL
order statistics; Mann-Whitney (on the primary metric), the bootstrap of the p95 latency lift and
answer similarity work on bounded samples (see their modules).
Each number carries its inputs, method and alpha, and the report carries the settings, so anyone
can recompute it.

The timeline is cumulative by exposure cohort: on day ``D`` it holds the units first seen by ``D``
(with all their data), which is what an analyst peeking on day ``D`` would mostly have seen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from evaluation.bayesian import BayesianResult, bayesian_test
from evaluation.config import ExperimentSettings
from evaluation.cuped import cuped_tests
from evaluation.decision import Verdict, decide
from evaluation.errors import EmptyArmError
from evaluation.guards import PowerResult, SrmResult, adjust, below_minimum, check_srm, power_analysis
from evaluation.metrics import Metric, Queryable, metric_moments, moments_sql, phase_split, ratio_of, select_metrics
from evaluation.moments import Ratio
from evaluation.quantiles import (
    BootstrapResult,
    bootstrap_quantile_lift,
    latency_sample,
    quantile_statistic,
    quantile_test,
)
from evaluation.ranks import MannWhitneyResult, mann_whitney
from evaluation.sequential import ConfidenceSequence
from evaluation.shadow import ShadowAnalysis, analyse_shadow
from evaluation.significance import Moments, TestResult, welch_t_test

QUANTILES = (0.5, 0.95, 0.99)
PHASES_SQL = """
SELECT phase, min(ts) AS first_ts, max(ts) AS last_ts, count(*) FILTER (WHERE role = 'shadow') AS shadow_rows
FROM interactions WHERE deployment_id = ? GROUP BY phase ORDER BY first_ts, phase
"""


@dataclass(frozen=True)
class ArmStat:
    """An arm's value of a metric and its sufficient statistics."""

    units: int
    value: float
    variance: float
    numerator_sum: float
    denominator_sum: float

    @staticmethod
    def of(stat: Ratio) -> ArmStat:
        """From a ratio record."""
        return ArmStat(stat.n, stat.mean, stat.variance, stat.m.sum, stat.d.sum)


@dataclass(frozen=True)
class MetricResult:
    """One metric in one phase, through every method."""

    name: str
    higher_is_better: bool
    champion: ArmStat
    challenger: ArmStat
    absolute: TestResult
    relative: TestResult
    sequential_absolute: TestResult
    sequential_relative: TestResult
    bayesian: BayesianResult
    power: PowerResult
    adjusted_p_value: float = 1.0


@dataclass(frozen=True)
class PhaseReport:
    """A ramp phase: its split, its guards and its metrics."""

    phase: str
    first_ts: str
    last_ts: str
    days: float
    expected_split: dict[str, float] | None
    units: dict[str, int]
    srm: SrmResult | None
    below_minimum: list[str]
    metrics: list[MetricResult] = field(default_factory=list)
    quantiles: list[TestResult] = field(default_factory=list)
    mann_whitney: MannWhitneyResult | None = None
    cuped: TestResult | None = None
    cuped_metrics: dict[str, TestResult] = field(default_factory=dict)
    bootstrap_p95: BootstrapResult | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ExperimentReport:
    """The whole report of one experiment."""

    experiment: str
    generated_at: str
    settings: dict[str, Any]
    phases: list[PhaseReport]
    shadow: ShadowAnalysis | None
    verdict: Verdict


def metric_result(metric: Metric, a: Ratio, b: Ratio, days: float, settings: ExperimentSettings) -> MetricResult:
    """Every method on one metric's two arms."""
    ma, mb = Moments.of(a), Moments.of(b)
    alpha, sides = settings.alpha, settings.sides
    relative = welch_t_test(ma, mb, relative=True, sides=sides, alpha=alpha)
    cs = ConfidenceSequence(alpha, settings.sequential_tuning, sides)
    prior = (settings.prior_mean, settings.prior_stddev) if settings.prior == "normal" else (None, None)
    return MetricResult(
        name=metric.name,
        higher_is_better=metric.higher_is_better,
        champion=ArmStat.of(a),
        challenger=ArmStat.of(b),
        absolute=welch_t_test(ma, mb, relative=False, sides=sides, alpha=alpha),
        relative=relative,
        sequential_absolute=cs.test(ma, mb, relative=False),
        sequential_relative=cs.test(ma, mb, relative=True),
        bayesian=bayesian_test(
            ma, mb, alpha=alpha, prior_mean=prior[0], prior_stddev=prior[1], higher_is_better=metric.higher_is_better
        ),
        power=power_analysis(
            relative.stderr, a.n + b.n, days, target_mde=settings.target_mde, alpha=alpha, power=settings.power
        ),
    )


def build_report(
    db: Queryable, experiment: str, settings: ExperimentSettings, *, metrics: list[str] | None = None,
    split: dict[str, float] | None = None,
) -> ExperimentReport:  # fmt: skip
    """Analyse every phase of ``experiment``; raises ``EvaluationError`` on bad names or an empty arm."""
    chosen = select_metrics(settings, metrics)
    moments = metric_moments(db, experiment, chosen)
    phases, shadow = [], None
    for info in db.query(PHASES_SQL, [experiment]):
        if info["shadow_rows"]:
            shadow = analyse_shadow(db, experiment, info["phase"], alpha=settings.alpha, seed=settings.seed)
        if info["phase"] in moments:
            phases.append(phase_report(db, experiment, info, moments[info["phase"]], chosen, settings, split))
    verdict = decide(phases[-1] if phases else None, shadow, settings)
    return ExperimentReport(
        experiment, datetime.now(UTC).isoformat(), settings.model_dump(mode="json"), phases, shadow, verdict
    )


def phase_report(
    db: Queryable, experiment: str, info: dict[str, Any], arms: dict[str, dict[str, Ratio]],
    metrics: list[Metric], settings: ExperimentSettings, split: dict[str, float] | None,
) -> PhaseReport:  # fmt: skip
    """One phase: SRM, minimum sizes, every metric, quantiles, Mann-Whitney, timeline."""
    phase = info["phase"]
    days = max((info["last_ts"] - info["first_ts"]).total_seconds() / 86400, 1 / 24)
    units = {arm: next(iter(stats.values())).n for arm, stats in arms.items()}
    expected = split or phase_split(phase)
    srm = check_srm(units, expected, settings.srm_threshold) if expected else None
    report = PhaseReport(
        phase, info["first_ts"].isoformat(), info["last_ts"].isoformat(), days, expected, units, srm,
        below_minimum(units, settings.min_units),
    )  # fmt: skip
    if "champion" not in arms or "challenger" not in arms:
        return report  # a champion-only (or shadow) phase has nothing to compare
    results = [metric_result(m, arms["champion"][m.name], arms["challenger"][m.name], days, settings) for m in metrics]
    adjusted = adjust([r.relative.p_value for r in results], settings.correction)
    results = [replace(r, adjusted_p_value=p) for r, p in zip(results, adjusted, strict=True)]
    quantiles = []
    for nu in QUANTILES:
        a = quantile_statistic(db, experiment, phase, "champion", nu, settings.alpha)
        b = quantile_statistic(db, experiment, phase, "challenger", nu, settings.alpha)
        quantiles.append(quantile_test(a, b, sides=settings.sides))
    primary = next((m for m in metrics if m.name == settings.primary_metric), metrics[0])
    mw = mann_whitney(db, experiment, phase, primary, sample_per_arm=settings.sample_per_arm, seed=settings.seed)
    timeline = cohort_timeline(db, experiment, phase, primary, settings)
    cuped = cuped_tests(db, experiment, phase, metrics, alpha=settings.alpha, sides=settings.sides)
    sample = latency_sample(db, experiment, phase, settings.sample_per_arm, settings.seed)
    bootstrap = bootstrap_quantile_lift(
        sample.get("champion", np.empty(0)), sample.get("challenger", np.empty(0)), 0.95,
        resamples=settings.bootstrap_resamples, alpha=settings.alpha, seed=settings.seed,
    )  # fmt: skip
    return replace(
        report, metrics=results, quantiles=quantiles, mann_whitney=mw, timeline=timeline, cuped=cuped[primary.name],
        cuped_metrics=cuped, bootstrap_p95=bootstrap,
    )  # fmt: skip


def cohort_timeline(
    db: Queryable, experiment: str, phase: str, metric: Metric, settings: ExperimentSettings
) -> list[dict[str, Any]]:
    """Cumulative relative lift of ``metric`` with its always-valid interval, day by day."""
    sql = moments_sql([metric], cohort=True)
    totals: dict[str, Ratio] = {}
    timeline = []
    cs = ConfidenceSequence(settings.alpha, settings.sequential_tuning)
    rows = db.query(sql, [experiment, phase, experiment, phase])
    for day in sorted({r["day"] for r in rows}):
        for row in (r for r in rows if r["day"] == day):
            stat = ratio_of(row, 0)
            totals[row["arm"]] = totals[row["arm"]] + stat if row["arm"] in totals else stat
        if "champion" in totals and "challenger" in totals:
            result = cs.test(Moments.of(totals["champion"]), Moments.of(totals["challenger"]), relative=True)
            units = totals["champion"].n + totals["challenger"].n
            point = {"day": day.isoformat(), "lift": result.estimate, "ci": list(result.ci), "units": units}
            timeline.append(point | {"error": result.error})
    return timeline


def require_arms(report: ExperimentReport) -> None:
    """Raise ``EmptyArmError`` when the latest A/B phase lacks an arm."""
    for phase in report.phases:
        if phase.expected_split and set(phase.units) != {"champion", "challenger"}:
            missing = {"champion", "challenger"} - set(phase.units)
            raise EmptyArmError(f"phase {phase.phase}: the {', '.join(sorted(missing))} arm has no data")


def to_json(report: ExperimentReport) -> dict[str, Any]:
    """The report as JSON-safe data (infinite interval ends become null)."""
    clean: Any = _finite(asdict(report))
    return dict(clean)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
