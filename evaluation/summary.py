"""Per-arm summary of what landed: the first look at an experiment, computed in DuckDB SQL.

Counts and means per (arm, role, model_version, phase); feedback is joined on interaction id.
A positive-feedback rate is ``thumbs up / (thumbs up + thumbs down)`` over served responses.
"""

from __future__ import annotations

from dataclasses import dataclass

from feedback.store import DuckDBStore

SUMMARY_SQL = """
WITH fb AS (
    SELECT interaction_id,
           count(*) FILTER (WHERE thumb = 'up')   AS ups,
           count(*) FILTER (WHERE thumb = 'down') AS downs,
           avg(rating)                            AS rating
    FROM feedback GROUP BY interaction_id
)
SELECT i.arm, i.role, i.model_version, i.phase,
       count(*)                          AS responses,
       count(DISTINCT i.unit_id)         AS units,
       count(*) FILTER (WHERE i.error IS NOT NULL) AS errors,
       avg(i.latency_ms)                 AS mean_latency_ms,
       avg(i.confidence)                 AS mean_confidence,
       coalesce(sum(fb.ups), 0)          AS thumbs_up,
       coalesce(sum(fb.downs), 0)        AS thumbs_down,
       avg(fb.rating)                    AS mean_rating
FROM interactions i LEFT JOIN fb USING (interaction_id)
GROUP BY ALL
ORDER BY i.arm, i.role, i.model_version, i.phase
"""


@dataclass(frozen=True)
class ArmSummary:
    """One row of the summary."""

    arm: str
    role: str
    model_version: str
    phase: str
    responses: int
    units: int
    errors: int
    mean_latency_ms: float | None
    mean_confidence: float | None
    thumbs_up: int
    thumbs_down: int
    mean_rating: float | None

    @property
    def positive_rate(self) -> float | None:
        """Share of thumbs that were up; None without thumbs."""
        total = self.thumbs_up + self.thumbs_down
        return self.thumbs_up / total if total else None


def arm_summary(store: DuckDBStore) -> list[ArmSummary]:
    """The summary rows, one per arm, role, model version and phase."""
    return [ArmSummary(**row) for row in store.query(SUMMARY_SQL)]
