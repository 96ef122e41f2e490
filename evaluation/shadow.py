"""Shadow (paired) analysis: champion and challenger answered the same requests.

Pairs are a served champion response and a shadow challenger response with the same
``interaction_id``. Per pair ``diff = challenger - champion``.

- Paired t-test (SQL moments of the differences): ``t = mean / (sd / sqrt(n))``, ``n - 1``
  degrees of freedom, two-sided; the same as a one-sample t-test on the differences.
- Wilcoxon signed-rank (ranks in SQL, on a bounded sample of at most ``sample`` pairs chosen by
  ``hash(interaction_id, seed)``): zero differences dropped, mid-ranks of ``|diff|``,
  ``W+`` = rank sum of positive differences, ``W = min(W+, W-)``, normal approximation without
  continuity correction: mean ``n (n+1) / 4``, variance ``n (n+1) (2n+1) / 24 - sum(t**3 - t) / 48``
  (as scipy's ``wilcoxon(method="approx")``).
- Agreement over all pairs (SQL counts): exact match of the texts, and match after
  ``evaluation.similarity`` normalization.
- Similarity (bounded sample of texts): mean ROUGE-L F1 of the challenger against the champion, and
  the pairs with the lowest similarity as examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from evaluation import constants
from evaluation.metrics import Queryable
from evaluation.similarity import NORMALIZE_SQL, rouge_l

PAIRED_METRICS = {"latency_ms": "latency_ms", "completion_tokens": "completion_tokens", "confidence": "confidence"}

PAIRS_CTE = """pairs AS (
    SELECT c.interaction_id, c.completion AS champion_text, s.completion AS challenger_text,
           {diffs}, (c.error IS NOT NULL)::INT AS champion_error, (s.error IS NOT NULL)::INT AS challenger_error,
           c.latency_ms AS champion_latency, s.latency_ms AS challenger_latency
    FROM interactions c JOIN interactions s USING (interaction_id)
    WHERE c.deployment_id = ? AND s.deployment_id = c.deployment_id AND c.phase = ?
      AND c.role = 'served' AND c.arm = 'champion' AND s.role = 'shadow' AND s.arm = 'challenger'
)"""
DIFFS = ", ".join(f"s.{col} - c.{col} AS d_{name}" for name, col in PAIRED_METRICS.items())
MOMENTS_SQL = (
    "WITH "
    + PAIRS_CTE.format(diffs=DIFFS)
    + """
SELECT count(*) AS pairs, {moments},
       sum(champion_error) AS champion_errors, sum(challenger_error) AS challenger_errors,
       quantile_cont(champion_latency, 0.95) AS champion_p95, quantile_cont(challenger_latency, 0.95) AS challenger_p95,
       count(*) FILTER (WHERE champion_text = challenger_text) AS exact,
       count(*) FILTER (WHERE {norm_a} = {norm_b}) AS normalized
FROM pairs"""
).format(
    moments=", ".join(
        f"count(d_{m}) AS n_{m}, sum(d_{m}) AS s_{m}, sum(d_{m} * d_{m}) AS ss_{m}" for m in PAIRED_METRICS
    ),
    norm_a=NORMALIZE_SQL.format(x="champion_text"),
    norm_b=NORMALIZE_SQL.format(x="challenger_text"),
)
WILCOXON_SQL = (  # fixed SQL; only a metric column name from PAIRED_METRICS is formatted in
    "WITH "  # noqa: S608
    + PAIRS_CTE.format(diffs=DIFFS)
    + """,
d AS (SELECT d_{m} AS v FROM pairs WHERE d_{m} IS NOT NULL AND d_{m} <> 0
      QUALIFY row_number() OVER (ORDER BY hash(interaction_id, ?::BIGINT)) <= ?),
ranked AS (SELECT v, rank() OVER (ORDER BY abs(v)) + (count(*) OVER (PARTITION BY abs(v)) - 1) / 2.0 AS r FROM d),
ties AS (SELECT coalesce(sum(t * t * t - t), 0) AS tie FROM (SELECT count(*)::DOUBLE AS t FROM d GROUP BY abs(v)))
SELECT count(*) AS n, coalesce(sum(r) FILTER (WHERE v > 0), 0) AS w_plus, any_value(ties.tie) AS tie
FROM ranked, ties"""
)
TEXT_SAMPLE_SQL = (
    "WITH "
    + PAIRS_CTE.format(diffs=DIFFS)
    + """
SELECT interaction_id, champion_text, challenger_text FROM pairs
QUALIFY row_number() OVER (ORDER BY hash(interaction_id, ?::BIGINT)) <= ?"""
)


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test and a Wilcoxon signed-rank test on one metric's differences."""

    metric: str
    n: int = 0
    mean_diff: float = 0.0
    ci: tuple[float, float] = (0.0, 0.0)
    t_p_value: float = 1.0
    wilcoxon_statistic: float = 0.0
    wilcoxon_p_value: float = 1.0
    wilcoxon_n: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ShadowAnalysis:
    """Everything shadow can measure about a challenger."""

    pairs: int
    tests: list[PairedTest]
    champion_error_rate: float
    challenger_error_rate: float
    champion_latency_p95: float
    challenger_latency_p95: float
    exact_match: float
    normalized_match: float
    mean_similarity: float
    similarity_sample: int
    disagreements: list[dict[str, Any]] = field(default_factory=list)


def paired_t(metric: str, n: int, total: float, squares: float, alpha: float) -> PairedTest:
    """One-sample t-test of the mean difference."""
    if n == 0:
        return PairedTest(metric, error=constants.NO_PAIRS)
    mean = total / n
    variance = (squares - total**2 / n) / (n - 1) if n > 1 else 0.0
    if n < 2:
        return PairedTest(metric, n, mean, error=constants.TOO_FEW_UNITS)
    if variance <= 0:
        return PairedTest(metric, n, mean, error=constants.ZERO_VARIANCE)
    se = math.sqrt(variance / n)
    t, width = mean / se, stats.t.ppf(1 - alpha / 2, n - 1) * se
    return PairedTest(metric, n, mean, (mean - float(width), mean + float(width)), float(2 * stats.t.sf(abs(t), n - 1)))


def wilcoxon(n: int, w_plus: float, tie: float) -> tuple[float, float]:
    """Signed-rank statistic min(W+, W-) and its normal-approximation two-sided p-value."""
    if n == 0:
        return 0.0, 1.0
    w_minus = n * (n + 1) / 2 - w_plus
    variance = n * (n + 1) * (2 * n + 1) / 24 - tie / 48
    if variance <= 0:
        return min(w_plus, w_minus), 1.0
    z = (min(w_plus, w_minus) - n * (n + 1) / 4) / math.sqrt(variance)
    return min(w_plus, w_minus), float(2 * stats.norm.cdf(-abs(z)))


def analyse_shadow(
    db: Queryable, experiment: str, phase: str = "shadow", *, alpha: float = 0.05, sample: int = 2000,
    seed: int = 0, examples: int = 5,
) -> ShadowAnalysis:  # fmt: skip
    """The paired analysis of a shadow phase."""
    row = db.query(MOMENTS_SQL, [experiment, phase])[0]
    pairs = int(row["pairs"])
    tests = []
    for m in PAIRED_METRICS:
        test = paired_t(m, int(row[f"n_{m}"] or 0), float(row[f"s_{m}"] or 0), float(row[f"ss_{m}"] or 0), alpha)
        w = db.query(WILCOXON_SQL.format(m=m), [experiment, phase, seed, sample])[0]
        statistic, p = wilcoxon(int(w["n"]), float(w["w_plus"]), float(w["tie"] or 0))
        tests.append(
            PairedTest(
                **{**test.__dict__, "wilcoxon_statistic": statistic, "wilcoxon_p_value": p, "wilcoxon_n": int(w["n"])}
            )
        )
    texts = db.query(TEXT_SAMPLE_SQL, [experiment, phase, seed, sample])
    scored = sorted(
        ({"interaction_id": t["interaction_id"], "champion": t["champion_text"], "challenger": t["challenger_text"],
          "rouge_l": rouge_l(t["challenger_text"], t["champion_text"])} for t in texts),
        key=lambda e: (e["rouge_l"], e["interaction_id"]),
    )  # fmt: skip

    def share(key: str) -> float:
        return float(row[key]) / pairs if pairs else 0.0

    return ShadowAnalysis(
        pairs=pairs,
        tests=tests,
        champion_error_rate=share("champion_errors"),
        challenger_error_rate=share("challenger_errors"),
        champion_latency_p95=float(row["champion_p95"] or 0),
        challenger_latency_p95=float(row["challenger_p95"] or 0),
        exact_match=share("exact"),
        normalized_match=share("normalized"),
        mean_similarity=sum(float(e["rouge_l"]) for e in scored) / len(scored) if scored else 0.0,
        similarity_sample=len(scored),
        disagreements=scored[:examples],
    )
