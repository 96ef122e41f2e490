"""The dashboard's cached views of an experiment: its report, its time series, its largest disagreements.

The report is the one ``GET /v1/reports/{experiment}`` serves (:func:`services.worker.reports.report_json`,
same settings, same store), so the page shows the numbers ``flywheel report`` prints. Everything here is
computed in the background (:mod:`services.worker.dashboard.cache`) and served from the last result.
"""

from __future__ import annotations

import functools
from typing import Any

from evaluation.metrics import Queryable
from evaluation.similarity import rouge_l
from feedback.pii import redact
from feedback.settings import Settings
from services.worker.dashboard.cache import Cached, ViewCache
from services.worker.dashboard.series import bucket_seconds, live_rates, shadow_agreement, traffic_split
from services.worker.reports import report_json

DISAGREEMENT_SAMPLE = 2000  # shadow pairs scored for the disagreement table (chosen by a seeded hash)
DISAGREEMENTS_KEPT = 200  # the least similar pairs kept for searching
SERIES_TTL_S = 15.0  # time series are recomputed this often, seconds
LIVE_TTL_S = 5.0  # live rates and the consumer lag are recomputed this often, seconds

DISAGREEMENT_SQL = """
SELECT c.interaction_id, c.ts, json_extract_string(c.messages, '$[#-1].content') AS prompt,
       c.completion AS champion, s.completion AS challenger
FROM interactions c JOIN interactions s USING (interaction_id)
WHERE c.deployment_id = ? AND s.deployment_id = c.deployment_id
  AND c.role = 'served' AND c.arm = 'champion' AND s.role = 'shadow' AND s.arm = 'challenger'
QUALIFY row_number() OVER (ORDER BY hash(c.interaction_id, ?::BIGINT)) <= ?
"""


class DashboardViews:
    """The views of one worker: its store and settings, and a cache of what was computed on them."""

    def __init__(self, store: Queryable, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.cache = ViewCache()

    def report(self, experiment: str, wait_s: float = 0.5) -> Cached | None:
        """The experiment's report (``report_json``), or None while it is first computed."""
        compute = functools.partial(report_json, self.store, self.settings.experiment, experiment)
        return self.cache.get(("report", experiment), compute, self.settings.worker.dashboard_report_ttl_s, wait_s)

    def series(self, experiment: str, wait_s: float = 0.5) -> Cached | None:
        """Traffic split and shadow agreement over time, in buckets of one width."""
        compute = functools.partial(experiment_series, self.store, experiment)
        return self.cache.get(("series", experiment), compute, SERIES_TTL_S, wait_s)

    def disagreements(self, experiment: str, wait_s: float = 0.5) -> Cached | None:
        """The least similar shadow pairs of a bounded sample, redacted, least similar first."""
        compute = functools.partial(least_similar, self.store, experiment, self.settings.experiment.seed)
        ttl = self.settings.worker.dashboard_report_ttl_s
        return self.cache.get(("disagreements", experiment), compute, ttl, wait_s)

    def live(self) -> Cached | None:
        """Requests per second, latency and errors per arm over the last few minutes."""
        return self.cache.get(("live",), lambda: live_rates(self.store), LIVE_TTL_S)

    def close(self) -> None:
        """Stop the background computations (before the store closes)."""
        self.cache.close()


def experiment_series(db: Queryable, experiment: str) -> dict[str, Any]:
    """The experiment's time series with their common bucket width."""
    width = bucket_seconds(db, experiment)
    return {
        "bucket_s": width,
        "traffic": traffic_split(db, experiment, width),
        "agreement": shadow_agreement(db, experiment, width),
    }


def least_similar(db: Queryable, experiment: str, seed: int) -> list[dict[str, Any]]:
    """Shadow pairs scored by ROUGE-L, least similar first, with PII redacted from every text."""
    rows = db.query(DISAGREEMENT_SQL, [experiment, seed, DISAGREEMENT_SAMPLE])
    scored = sorted(
        (row | {"rouge_l": rouge_l(row["challenger"], row["champion"])} for row in rows),
        key=lambda row: (row["rouge_l"], row["interaction_id"]),
    )[:DISAGREEMENTS_KEPT]
    return [
        {
            "interaction_id": row["interaction_id"],
            "ts": row["ts"].isoformat(),
            "prompt": redact(row["prompt"] or ""),
            "champion": redact(row["champion"]),
            "challenger": redact(row["challenger"]),
            "rouge_l": row["rouge_l"],
        }
        for row in scored
    ]


def search(rows: list[dict[str, Any]], query: str | None, limit: int) -> list[dict[str, Any]]:
    """The rows whose prompt or answers contain ``query`` (any case), at most ``limit``."""
    needle = (query or "").strip().lower()
    fields = ("prompt", "champion", "challenger", "interaction_id")
    found = (row for row in rows if not needle or any(needle in str(row[f]).lower() for f in fields))
    return [row for _, row in zip(range(limit), found, strict=False)]
