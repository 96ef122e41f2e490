"""Time series the dashboard draws: traffic split, shadow agreement and similarity, live rates per arm.

Each series is one grouped SQL scan over an experiment's responses (``deployment_id``), in buckets
of a width chosen so that an experiment of any length gives at most about ``POINTS`` points.
Similarity (ROUGE-L) is computed in Python on a bounded sample of pairs per bucket.
"""

from __future__ import annotations

import math
from typing import Any

from evaluation.metrics import Queryable
from evaluation.similarity import NORMALIZE_SQL, rouge_l

POINTS = 40  # most points per series
NICE_SECONDS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
SIMILARITY_PER_BUCKET = 200  # most pairs scored with ROUGE-L per bucket
LIVE_WINDOW_S = 300  # the live request rate and latency cover this many seconds

SPAN_SQL = "SELECT min(ts) AS lo, max(ts) AS hi FROM interactions WHERE deployment_id = ?"
TRAFFIC_SQL = """
SELECT time_bucket(to_seconds(?::BIGINT), ts) AS t, arm, count(*) AS responses, count(DISTINCT unit_id) AS units
FROM interactions WHERE deployment_id = ? AND role = 'served'
GROUP BY ALL ORDER BY t, arm
"""
# fixed SQL: only the normalization rule and a constant are formatted in
PAIRS_SQL = """
WITH pairs AS (
    SELECT time_bucket(to_seconds(?::BIGINT), c.ts) AS t, c.interaction_id,
           c.completion AS a, s.completion AS b
    FROM interactions c JOIN interactions s USING (interaction_id)
    WHERE c.deployment_id = ? AND s.deployment_id = c.deployment_id
      AND c.role = 'served' AND c.arm = 'champion' AND s.role = 'shadow' AND s.arm = 'challenger'
)
SELECT t, count(*) AS pairs,
       count(*) FILTER (WHERE a = b) AS exact,
       count(*) FILTER (WHERE {norm_a} = {norm_b}) AS normalized,
       list({{'a': a, 'b': b}} ORDER BY hash(interaction_id))[1:{sample}] AS sample
FROM pairs GROUP BY t ORDER BY t
""".format(  # noqa: S608
    norm_a=NORMALIZE_SQL.format(x="a"), norm_b=NORMALIZE_SQL.format(x="b"), sample=SIMILARITY_PER_BUCKET
)
LIVE_SQL = """
SELECT arm, role, count(*) AS responses, avg(latency_ms) AS mean_latency_ms,
       quantile_cont(latency_ms, 0.95) AS p95_latency_ms, count(*) FILTER (WHERE error IS NOT NULL) AS errors
FROM interactions WHERE ts >= now() - to_seconds(?::BIGINT)
GROUP BY ALL ORDER BY arm, role
"""


def bucket_seconds(db: Queryable, experiment: str) -> int:
    """A round bucket width giving at most about ``POINTS`` buckets over the experiment's span."""
    span = db.query(SPAN_SQL, [experiment])[0]
    if span["lo"] is None:
        return NICE_SECONDS[0]
    seconds = (span["hi"] - span["lo"]).total_seconds() / POINTS
    return next((nice for nice in NICE_SECONDS if nice >= seconds), math.ceil(seconds / 86400) * 86400)


def traffic_split(db: Queryable, experiment: str, width_s: int) -> list[dict[str, Any]]:
    """Served responses and units per arm in each bucket, with the challenger's share of responses."""
    points: dict[str, dict[str, Any]] = {}
    for row in db.query(TRAFFIC_SQL, [width_s, experiment]):
        point = points.setdefault(row["t"].isoformat(), {"t": row["t"].isoformat(), "champion": 0, "challenger": 0})
        point[row["arm"]] = int(row["responses"])
    for point in points.values():
        total = point["champion"] + point["challenger"]
        point["challenger_share"] = point["challenger"] / total if total else None
    return list(points.values())


def shadow_agreement(db: Queryable, experiment: str, width_s: int) -> list[dict[str, Any]]:
    """Per bucket: pairs, exact and normalized agreement, and the mean ROUGE-L of a bounded sample."""
    series = []
    for row in db.query(PAIRS_SQL, [width_s, experiment]):
        pairs = int(row["pairs"])
        scores = [rouge_l(pair["b"] or "", pair["a"] or "") for pair in row["sample"]]
        series.append(
            {
                "t": row["t"].isoformat(),
                "pairs": pairs,
                "exact_match": int(row["exact"]) / pairs,
                "normalized_match": int(row["normalized"]) / pairs,
                "mean_similarity": sum(scores) / len(scores) if scores else None,
                "similarity_sample": len(scores),
            }
        )
    return series


def live_rates(db: Queryable, window_s: int = LIVE_WINDOW_S) -> list[dict[str, Any]]:
    """Per arm and role over the last ``window_s`` seconds: requests per second, latency, errors."""
    return [
        row | {"requests_per_s": int(row["responses"]) / window_s, "window_s": window_s}
        for row in db.query(LIVE_SQL, [window_s])
    ]


EXPERIMENTS_SQL = """
SELECT deployment_id AS experiment, min(ts) AS first_ts, max(ts) AS last_ts, count(*) AS responses,
       list(DISTINCT phase ORDER BY phase) AS phases
FROM interactions GROUP BY deployment_id ORDER BY last_ts DESC LIMIT ?
"""


def experiments(db: Queryable, limit: int = 20) -> list[dict[str, Any]]:
    """The latest experiments (deployments) with data: first and last response, responses, phases."""
    return [
        row | {"first_ts": row["first_ts"].isoformat(), "last_ts": row["last_ts"].isoformat()}
        for row in db.query(EXPERIMENTS_SQL, [limit])
    ]
