"""Guards on an experiment's numbers: sample-ratio mismatch, minimum samples, multiple testing, power.

Definitions:

- SRM (as gbstats' ``check_srm``): Pearson chi-square of observed units per arm against the
  phase's expected split, ``sum((o - e)**2 / e)`` with ``e = share * total``, ``k - 1`` degrees of
  freedom; flagged when the p-value is below the threshold (default 0.001).
- Holm: sort p-values ascending, ``p_(i) * (m - i + 1)`` (i from 1), running maximum, capped at 1.
- Benjamini-Hochberg: sort ascending, ``p_(i) * m / i``, running minimum from the largest, capped at 1.
- Power of a two-sided z-test for a relative lift ``delta`` with standard error ``se``:
  ``Phi(delta/se - z_{1-alpha/2}) + Phi(-delta/se - z_{1-alpha/2})``.
- Minimum detectable (relative) effect at the current sample: ``(z_{1-alpha/2} + z_power) * se``.
- Days to the target MDE at current traffic: the standard error shrinks as ``1 / sqrt(units)``,
  so ``units_needed = units * (mde / target)**2`` and days ``(units_needed - units) / units_per_day``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class SrmResult:
    """The sample-ratio check of one phase."""

    observed: dict[str, int]
    expected_share: dict[str, float]
    chi2: float
    p_value: float
    threshold: float

    @property
    def mismatch(self) -> bool:
        """True when the split is implausible (p below the threshold)."""
        return self.p_value < self.threshold


def check_srm(observed: Mapping[str, int], expected_share: Mapping[str, float], threshold: float = 0.001) -> SrmResult:
    """Chi-square goodness of fit of units per arm against the expected shares."""
    total = sum(observed.get(arm, 0) for arm in expected_share)
    arms = [arm for arm, share in expected_share.items() if share > 0]
    chi2 = 0.0
    for arm in arms:
        expected = expected_share[arm] * total
        chi2 += (observed.get(arm, 0) - expected) ** 2 / expected if expected else 0.0
    p = float(stats.chi2.sf(chi2, len(arms) - 1)) if total and len(arms) > 1 else 1.0
    return SrmResult(dict(observed), dict(expected_share), chi2, p, threshold)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.maximum.accumulate(np.asarray(p_values)[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return [float(p) for p in out]


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    scaled = np.asarray(p_values)[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return [float(p) for p in out]


def adjust(p_values: Sequence[float], method: str) -> list[float]:
    """Adjusted p-values by ``holm``, ``bh`` or ``none``."""
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    return [float(p) for p in p_values]


@dataclass(frozen=True)
class PowerResult:
    """Power at the target effect, the minimum detectable effect now, and days until the target is reachable."""

    power: float
    mde: float
    target_mde: float
    days_to_target: float | None


def power_analysis(
    se: float, units: int, days_elapsed: float, *, target_mde: float, alpha: float = 0.05, power: float = 0.8
) -> PowerResult:
    """Power, MDE and days-to-MDE from the current standard error of the (relative) lift."""
    if se <= 0 or units <= 0:
        return PowerResult(0.0, math.inf, target_mde, None)
    z_alpha, z_power = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    achieved = float(stats.norm.cdf(target_mde / se - z_alpha) + stats.norm.cdf(-target_mde / se - z_alpha))
    mde = float((z_alpha + z_power) * se)
    days: float | None = None
    if days_elapsed > 0:
        needed = units * (mde / target_mde) ** 2
        days = max(0.0, (needed - units) / (units / days_elapsed))
    return PowerResult(achieved, mde, target_mde, days)


def below_minimum(units: Mapping[str, int], minimum: int) -> list[str]:
    """Arms with fewer units than the minimum sample size."""
    return [arm for arm, n in units.items() if n < minimum]
