"""Sufficient statistics that add together: the inputs of every moment-based method.

Definitions (as in GrowthBook's gbstats):

- ``SampleMean(n, sum, sum_squares)``: mean ``sum / n``; variance (per unit, sample)
  ``(sum_squares - sum**2 / n) / (n - 1)``.
- ``Ratio(n, m, d)``: a request-level metric analysed at the unit of assignment. ``m`` and ``d``
  are the per-unit numerator and denominator totals (``SampleMean`` each) and ``sum_product`` is
  ``sum(m_u * d_u)``. Mean ``m.sum / d.sum``; per-unit variance by the delta method,
  ``var_m / mu_d**2 + var_d * mu_m**2 / mu_d**4 - 2 * cov_md * mu_m / mu_d**3`` with
  ``cov_md = (sum_product - m.sum * d.sum / n) / (n - 1)`` and ``mu_* = *.sum / n``.
- ``Paired(post, pre, sum_product)``: a per-unit value with a pre-period covariate, for CUPED.

Each record's ``variance`` is per unit; the variance of its mean is ``variance / n``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SampleMean:
    """n, sum and sum of squares of per-unit values."""

    n: int
    sum: float
    sum_squares: float

    @property
    def mean(self) -> float:
        """The sample mean; 0 when empty."""
        return self.sum / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """The sample variance (n - 1 denominator); 0 below two units."""
        if self.n < 2:
            return 0.0
        return max((self.sum_squares - self.sum**2 / self.n) / (self.n - 1), 0.0)

    def __add__(self, other: SampleMean) -> SampleMean:
        return SampleMean(self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares)


@dataclass(frozen=True, slots=True)
class Ratio:
    """Per-unit numerator and denominator totals with their cross-product."""

    n: int
    m: SampleMean
    d: SampleMean
    sum_product: float

    @property
    def mean(self) -> float:
        """sum(numerator) / sum(denominator); 0 when the denominator sums to 0."""
        return self.m.sum / self.d.sum if self.d.sum else 0.0

    @property
    def covariance(self) -> float:
        """Sample covariance of per-unit numerator and denominator."""
        if self.n < 2:
            return 0.0
        return (self.sum_product - self.m.sum * self.d.sum / self.n) / (self.n - 1)

    @property
    def variance(self) -> float:
        """Per-unit variance of the ratio by the delta method; 0 when undefined."""
        mu_m, mu_d = self.m.mean, self.d.mean
        if self.n < 2 or mu_d == 0:
            return 0.0
        value = self.m.variance / mu_d**2 + self.d.variance * mu_m**2 / mu_d**4 - 2 * self.covariance * mu_m / mu_d**3
        return max(value, 0.0)

    def __add__(self, other: Ratio) -> Ratio:
        return Ratio(self.n + other.n, self.m + other.m, self.d + other.d, self.sum_product + other.sum_product)


@dataclass(frozen=True, slots=True)
class Paired:
    """A per-unit value (post) and its pre-period covariate (pre) with their cross-product."""

    post: SampleMean
    pre: SampleMean
    sum_product: float

    @property
    def n(self) -> int:
        """Units."""
        return self.post.n

    @property
    def covariance(self) -> float:
        """Sample covariance of post and pre."""
        if self.n < 2:
            return 0.0
        return (self.sum_product - self.post.sum * self.pre.sum / self.n) / (self.n - 1)

    def __add__(self, other: Paired) -> Paired:
        return Paired(self.post + other.post, self.pre + other.pre, self.sum_product + other.sum_product)


Statistic = SampleMean | Ratio
