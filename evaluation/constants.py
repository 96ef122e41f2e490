"""Messages that statistics put in a result's ``error`` instead of raising on degenerate data."""

from __future__ import annotations

EMPTY_ARM = "an arm has no units"
TOO_FEW_UNITS = "an arm has fewer than 2 units, so its variance is undefined"
ZERO_VARIANCE = "the variance of the estimate is zero"
ZERO_CONTROL_MEAN = "the control mean is zero, so a relative lift is undefined"
ZERO_DENOMINATOR = "a ratio metric's denominator sums to zero in an arm"
NO_PAIRS = "no paired responses"
NO_SAMPLE = "no values in the sample of an arm"
BELOW_MINIMUM = "an arm has fewer units than the minimum sample size"
QUANTILE_OUT_OF_RANGE = "too few values to bound this quantile"
