"""Memory of a process over time: its resident set size, and the trend of a series of samples.

The trend is the least-squares slope of RSS (MiB) over time (minutes) with its 95% confidence
interval (``scipy.stats.linregress``, Student t with n-2 degrees of freedom). Successive samples
are correlated (RSS moves in allocator-sized steps), so the interval is if anything too narrow;
the slope is printed whatever the verdict.

"Flat" means the interval holds 0, or the slope is under ``FLAT_MIB_PER_MIN``: 0.1 MiB/min, about
1 GiB a week, growth that a replica restarted weekly absorbs, and below what keeping one event
(about 1.5 KB) per request would show at 4 requests a second (about 0.35 MiB/min). Otherwise the
trend is "growing" (what a leak looks like) or "falling" (memory handed back, no leak).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

FLAT_MIB_PER_MIN = 0.1  # about 1 GiB a week


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` now, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass(frozen=True)
class Trend:
    """RSS after the warm-up: slope (MiB/min) with its 95% interval, the change over the window (MiB)."""

    process: str
    samples: int
    slope: float = math.nan
    low: float = math.nan
    high: float = math.nan
    change: float = math.nan
    error: str | None = None  # why there is no slope

    @property
    def verdict(self) -> str:
        """``flat`` (the interval holds 0, or the slope is under ``FLAT_MIB_PER_MIN``), ``growing`` or ``falling``."""
        if self.low <= 0 <= self.high or abs(self.slope) < FLAT_MIB_PER_MIN:
            return "flat"
        return "growing" if self.slope > 0 else "falling"


def rss_trend(process: str, times_s: list[float], mib: list[float], warmup_s: float) -> Trend:
    """The least-squares line of ``mib`` over ``times_s`` (in minutes), from ``warmup_s`` on."""
    kept = [(t / 60, m) for t, m in zip(times_s, mib, strict=True) if t >= warmup_s]
    if len(kept) < 3:
        return Trend(process, len(kept), error="fewer than 3 samples after the warm-up")
    minutes, values = [t for t, _ in kept], [m for _, m in kept]
    fit = stats.linregress(minutes, values)
    half = stats.t.ppf(0.975, len(kept) - 2) * fit.stderr
    return Trend(process, len(kept), fit.slope, fit.slope - half, fit.slope + half, values[-1] - values[0])


def print_trend(trend: Trend, served_per_minute: float) -> None:
    """The slope with its interval, per served request, the change, and the verdict."""
    if trend.error:
        print(f"  {trend.process}: {trend.error}")
        return
    per_request = trend.slope * 1024 / served_per_minute if served_per_minute else math.nan
    print(
        f"  {trend.process} after the warm-up ({trend.samples} samples): slope {trend.slope:+.3f} MiB/min"
        f" (95% CI {trend.low:+.3f} to {trend.high:+.3f}), {per_request:+.2f} KiB per served request,"
        f" change {trend.change:+.1f} MiB: {trend.verdict}"
    )
