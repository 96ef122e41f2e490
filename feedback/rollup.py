"""Per-unit rollups kept in each batch's transaction, so A/B reports sum units instead of joining responses.

Tables (migration 4):

- ``unit_rollup``: per (deployment, phase, arm, unit) of served responses: first ``ts``, responses,
  errors, sums of latency, completion tokens and confidence, confidences given; and the unit's
  feedback: thumbs up, thumbs down, sum and count of ratings, responses with at least one correction.
- ``feedback_rollup``: per interaction whose served response has landed: its feedback totals
  (feedbacks, ups, downs, rating sum, ratings, corrections) and that response's unit key.
- ``feedback_pending``: the same totals for interactions whose served response has not landed yet
  (the two topics are read independently, so feedback may come first).

The feedback rule is the report's (``evaluation.metrics.FEEDBACK_CTE``): every feedback row counts
(several per interaction add up); a response counts as corrected once, whatever number of
corrections it has. Each batch adds only rows new to the store: the usual batch is inserted in one
piece (every row is new or the insert fails), so its rollup reads the whole batch after the insert;
a redelivered batch is rolled up before its ``INSERT OR IGNORE``, from the rows whose key is not
stored yet. An interaction has one served response (DESIGN.md); the rollup relies on it.

``RollupWriter`` wraps the store's table writers so the rollup runs inside the same statements
(and so the same transaction) as each insert.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from feedback.migrations import MIGRATIONS

_INTERACTION_FIELDS = {
    "event_id": "VARCHAR",
    "interaction_id": "VARCHAR",
    "unit_id": "VARCHAR",
    "arm": "VARCHAR",
    "role": "VARCHAR",
    "deployment_id": "VARCHAR",
    "phase": "VARCHAR",
    "latency_ms": "DOUBLE",
    "completion_tokens": "BIGINT",
    "confidence": "DOUBLE",
    "error": "VARCHAR",
}
_FEEDBACK_FIELDS = {
    "feedback_id": "VARCHAR",
    "interaction_id": "VARCHAR",
    "thumb": "VARCHAR",
    "rating": "BIGINT",
    "correction": "VARCHAR",
}
_KEY = "deployment_id, phase, arm, unit_id"
_FEEDBACK_SUMS = "feedbacks, ups, downs, rating_sum, ratings, corrections"
_ADD_FEEDBACK = ", ".join(f"{c} = {c} + excluded.{c}" for c in _FEEDBACK_SUMS.split(", "))
_ADD_UNIT_FEEDBACK = ", ".join(
    f"{c} = {c} + excluded.{c}" for c in ("ups", "downs", "rating_sum", "ratings", "corrected")
)

# served responses of the batch (with pending feedback of theirs) -> unit totals, then keyed feedback
_INTERACTIONS = """
CREATE OR REPLACE TEMP TABLE rollup_served AS
SELECT b.interaction_id, b.deployment_id, b.phase, b.arm, b.unit_id, b.ts, b.error, b.latency_ms,
       b.completion_tokens, b.confidence, p.feedbacks, p.ups, p.downs, p.rating_sum, p.ratings, p.corrections
FROM (SELECT unnest(json_transform(raw, '{spec}')), ts FROM {view}) b
LEFT JOIN feedback_pending p USING (interaction_id)
WHERE b.role = 'served'{new};
INSERT INTO unit_rollup
SELECT {key}, min(ts), count(*), count(error), sum(latency_ms), sum(completion_tokens), coalesce(sum(confidence), 0),
       count(confidence), coalesce(sum(ups), 0), coalesce(sum(downs), 0), coalesce(sum(rating_sum), 0),
       coalesce(sum(ratings), 0), count(*) FILTER (WHERE corrections > 0)
FROM rollup_served GROUP BY ALL
ON CONFLICT DO UPDATE SET first_ts = least(first_ts, excluded.first_ts), responses = responses + excluded.responses,
    errors = errors + excluded.errors, latency_ms = latency_ms + excluded.latency_ms,
    completion_tokens = completion_tokens + excluded.completion_tokens, confidence = confidence + excluded.confidence,
    confidences = confidences + excluded.confidences, {add_unit_feedback};
INSERT OR IGNORE INTO feedback_rollup
SELECT interaction_id, {sums}, {key} FROM rollup_served WHERE feedbacks IS NOT NULL;
DELETE FROM feedback_pending
WHERE interaction_id IN (SELECT interaction_id FROM rollup_served WHERE feedbacks IS NOT NULL)
"""

# new feedback per interaction, keyed from the rollup (known) or the served response (first feedback)
_FEEDBACK = """
CREATE OR REPLACE TEMP TABLE rollup_feedback AS
WITH b AS (SELECT unnest(json_transform(raw, '{spec}')) FROM {view}),
d AS (SELECT interaction_id, count(*) AS feedbacks, count(*) FILTER (WHERE thumb = 'up') AS ups,
             count(*) FILTER (WHERE thumb = 'down') AS downs, coalesce(sum(rating), 0) AS rating_sum,
             count(rating) AS ratings, count(correction) AS corrections
      FROM b WHERE true{new} GROUP BY interaction_id),
s AS (SELECT interaction_id, {key} FROM interactions
      WHERE role = 'served' AND interaction_id IN (SELECT interaction_id FROM d))
SELECT d.*, coalesce(f.corrections, 0) AS corrections_before,
       coalesce(f.deployment_id, s.deployment_id) AS deployment_id,
       coalesce(f.phase, s.phase) AS phase, coalesce(f.arm, s.arm) AS arm, coalesce(f.unit_id, s.unit_id) AS unit_id
FROM d LEFT JOIN feedback_rollup f USING (interaction_id) LEFT JOIN s USING (interaction_id);
INSERT INTO unit_rollup
SELECT {key}, TIMESTAMPTZ 'infinity', 0, 0, 0, 0, 0, 0, sum(ups), sum(downs), sum(rating_sum), sum(ratings),
       count(*) FILTER (WHERE corrections_before = 0 AND corrections > 0)
FROM rollup_feedback WHERE deployment_id IS NOT NULL GROUP BY ALL
ON CONFLICT DO UPDATE SET {add_unit_feedback};
INSERT INTO feedback_rollup
SELECT interaction_id, {sums}, {key} FROM rollup_feedback WHERE deployment_id IS NOT NULL
ON CONFLICT DO UPDATE SET {add_feedback};
INSERT INTO feedback_pending
SELECT interaction_id, {sums} FROM rollup_feedback WHERE deployment_id IS NULL
ON CONFLICT DO UPDATE SET {add_feedback}
"""

_NEW = {
    "interactions": " AND NOT EXISTS (SELECT 1 FROM interactions t WHERE t.event_id = b.event_id)",
    "feedback": " AND NOT EXISTS (SELECT 1 FROM feedback t WHERE t.feedback_id = b.feedback_id)",
}


class TableWriter(Protocol):
    """The store's per-table insert statements (``feedback.ingest.TableWriter``)."""

    @property
    def view(self) -> str:
        """The batch's registered view."""
        ...

    @property
    def insert(self) -> str:
        """Inserts every row of the view (fails on a stored key)."""
        ...

    @property
    def insert_new(self) -> str:
        """Inserts the rows whose key is not stored; its last statement answers the count."""
        ...


@dataclass(frozen=True, slots=True)
class RollupWriter:
    """A table writer whose inserts also keep the rollups.

    ``insert`` (every row new) rolls the batch up after inserting it; ``insert_new`` (a redelivery)
    rolls up the rows not stored yet and then inserts, so its last statement still answers the count.
    """

    view: str
    insert: str
    insert_new: str


def rollup_sql(table: str, view: str, *, only_new: bool) -> str | None:
    """The statements rolling up ``view``'s rows of ``table`` (None for tables without a rollup)."""
    if table not in _NEW:
        return None
    template, fields = (
        (_INTERACTIONS, _INTERACTION_FIELDS) if table == "interactions" else (_FEEDBACK, _FEEDBACK_FIELDS)
    )
    return template.format(
        spec=json.dumps(fields),
        view=view,
        new=_NEW[table] if only_new else "",
        key=_KEY,
        sums=_FEEDBACK_SUMS,
        add_feedback=_ADD_FEEDBACK,
        add_unit_feedback=_ADD_UNIT_FEEDBACK,
    )


def with_rollups(writers: Mapping[str, TableWriter]) -> dict[str, TableWriter]:
    """The store's writers by table, those of interactions and feedback keeping the rollups too."""
    out: dict[str, TableWriter] = {}
    for table, writer in writers.items():
        after, before = rollup_sql(table, writer.view, only_new=False), rollup_sql(table, writer.view, only_new=True)
        if after is None or before is None:
            out[table] = writer
            continue
        out[table] = RollupWriter(writer.view, f"{writer.insert};\n{after}", f"{before};\n{writer.insert_new}")
    return out


def rebuild_sql() -> str:
    """Statements that recompute every rollup from the raw tables in one transaction (migration 4's SQL).

    For a store whose raw rows changed outside the sink (an import, a retention purge): reports read
    the raw tables until the rollups are current again.
    """
    drop = "DROP TABLE unit_rollup; DROP TABLE feedback_rollup; DROP TABLE feedback_pending;"
    return f"BEGIN TRANSACTION; {drop}\n{dict(MIGRATIONS)[4]}\nCOMMIT"
