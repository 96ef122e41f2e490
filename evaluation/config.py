"""Experiment and statistics settings: alpha, the sequential tuning parameter, priors, guards, gates.

A pydantic model with defaults, so a report or a decision is reproducible from the settings it
prints. It is meant to become the ``experiment`` section of ``feedback.settings.Settings``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CustomMetric(BaseModel):
    """A metric defined as SQL over one response row (aliases ``i`` interactions, ``fb`` feedback).

    The metric is ``sum(numerator) / sum(denominator)`` over an arm's responses, analysed per unit
    with the delta method; ``denominator = "1"`` makes it a per-response mean.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,40}$")  # also a SQL column alias
    numerator: str  # SQL expression per response, e.g. "i.completion_tokens"
    denominator: str = "1"  # SQL expression per response
    higher_is_better: bool = True


class ExperimentSettings(BaseModel):
    """How experiments are analysed and decided."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of tests and intervals
    sides: Literal["two-sided", "greater", "less"] = "two-sided"  # alternative of the t-tests
    sequential: bool = True  # report always-valid intervals (safe under peeking)
    sequential_tuning: float = Field(5000.0, gt=0)  # units (both arms) where the sequence is tightest
    prior: Literal["flat", "normal"] = "flat"  # Bayesian prior on the relative lift
    prior_mean: float = 0.0  # mean of the normal prior on the relative lift
    prior_stddev: float = Field(0.3, gt=0)  # standard deviation of the normal prior on the relative lift
    srm_threshold: float = Field(0.001, gt=0, lt=1)  # SRM flagged when the chi-square p-value is below this
    min_units: int = Field(100, ge=2)  # units per arm before a phase's results count
    correction: Literal["holm", "bh", "none"] = "holm"  # multiple-testing correction across metrics
    power: float = Field(0.8, gt=0, lt=1)  # target power for MDE and days-to-MDE
    target_mde: float = Field(0.05, gt=0)  # relative lift the experiment should be able to detect
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000)  # bootstrap replicates for quantile CIs
    sample_per_arm: int = Field(100_000, ge=100)  # cap of rows per arm for rank and resampling methods
    seed: int = 0  # seed of sampling and resampling, so reports reproduce
    primary_metric: str = "positive_feedback_rate"  # the metric that decides promotion
    non_inferiority_margin: float = Field(0.02, ge=0)  # relative loss on the primary metric tolerated
    max_error_rate_increase: float = Field(0.01, ge=0)  # absolute error-rate increase tolerated (guardrail)
    max_latency_p95_increase: float = Field(0.10, ge=0)  # relative p95 latency increase tolerated
    max_negative_feedback_increase: float = Field(0.02, ge=0)  # absolute thumbs-down rate increase tolerated
    shadow_min_pairs: int = Field(200, ge=1)  # paired responses before shadow can be left
    shadow_min_agreement: float = Field(0.0, ge=0, le=1)  # least mean similarity to leave shadow
    ramp: tuple[int, ...] = (5, 10, 25, 50)  # challenger percentages of the A/B steps
    custom_metrics: tuple[CustomMetric, ...] = ()

    @model_validator(mode="after")
    def _ramp_is_a_ladder(self) -> ExperimentSettings:
        steps = list(self.ramp)
        if not steps or any(not 0 < p < 100 for p in steps) or steps != sorted(set(steps)):
            raise ValueError(f"ramp: percentages must rise strictly within 1..99 (got {steps})")
        return self
