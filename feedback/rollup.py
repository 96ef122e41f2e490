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
(and so the same transaction) as each insert, reading the batch's rows parsed once for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from feedback.migrations import MIGRATIONS

_KEY = "deployment_id, phase, arm, unit_id"
_FEEDBACK_SUMS = "feedbacks, ups, downs, rating_sum, ratings, corrections"
_ADD_FEEDBACK = ", ".join(f"{c} = {c} + excluded.{c}" for c in _FEEDBACK_SUMS.split(", "))
_ADD_UNIT_FEEDBACK = ", ".join(
    f"{c} = {c} + excluded.{c}" for c in ("ups", "downs", "rating_sum", "ratings", "corrected")
)

# served responses of the batch (with pending feedback of theirs) -> unit totals; pending feedback -> keyed
_INTERACTIONS = """
INSERT INTO unit_rollup
SELECT b.deployment_id, b.phase, b.arm, b.unit_id, min(b.ts), count(*), count(b.error), sum(b.latency_ms),
       sum(b.completion_tokens), coalesce(sum(b.confidence), 0), count(b.confidence), coalesce(sum(p.ups), 0),
       coalesce(sum(p.downs), 0), coalesce(sum(p.rating_sum), 0), coalesce(sum(p.ratings), 0),
       count(*) FILTER (WHERE p.corrections > 0)
FROM {staged} b LEFT JOIN feedback_pending p USING (interaction_id)
WHERE b.role = 'served'{new}
GROUP BY ALL
ON CONFLICT DO UPDATE SET first_ts = least(first_ts, excluded.first_ts), responses = responses + excluded.responses,
    errors = errors + excluded.errors, latency_ms = latency_ms + excluded.latency_ms,
    completion_tokens = completion_tokens + excluded.completion_tokens, confidence = confidence + excluded.confidence,
    confidences = confidences + excluded.confidences, {add_unit_feedback};
INSERT OR IGNORE INTO feedback_rollup
SELECT p.interaction_id, {pending_sums}, b.deployment_id, b.phase, b.arm, b.unit_id
FROM feedback_pending p JOIN {staged} b USING (interaction_id)
WHERE b.role = 'served'{new};
DELETE FROM feedback_pending
WHERE interaction_id IN (SELECT interaction_id FROM {staged} b WHERE b.role = 'served'{new})
"""

# new feedback per interaction, keyed from the rollup (known) or the served response (first feedback)
_FEEDBACK = """
SET VARIABLE rollup_low = (SELECT min(interaction_id) FROM {staged});
SET VARIABLE rollup_high = (SELECT max(interaction_id) FROM {staged});
CREATE OR REPLACE TEMP TABLE rollup_feedback AS
WITH d AS (SELECT interaction_id, count(*) AS feedbacks, count(*) FILTER (WHERE thumb = 'up') AS ups,
             count(*) FILTER (WHERE thumb = 'down') AS downs, coalesce(sum(rating), 0) AS rating_sum,
             count(rating) AS ratings, count(correction) AS corrections
      FROM {staged} b WHERE true{new} GROUP BY interaction_id),
s AS (SELECT interaction_id, {key} FROM interactions
      WHERE role = 'served' AND interaction_id BETWEEN getvariable('rollup_low') AND getvariable('rollup_high')
        AND interaction_id IN (SELECT interaction_id FROM d)),
f AS (SELECT * FROM feedback_rollup
      WHERE interaction_id BETWEEN getvariable('rollup_low') AND getvariable('rollup_high'))
SELECT d.*, coalesce(f.corrections, 0) AS corrections_before,
       coalesce(f.deployment_id, s.deployment_id) AS deployment_id,
       coalesce(f.phase, s.phase) AS phase, coalesce(f.arm, s.arm) AS arm, coalesce(f.unit_id, s.unit_id) AS unit_id
FROM d LEFT JOIN f USING (interaction_id) LEFT JOIN s USING (interaction_id);
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
        """``INSERT INTO table BY NAME select``: every row of the view (fails on a stored key)."""
        ...

    @property
    def insert_new(self) -> str:
        """``INSERT OR IGNORE INTO table BY NAME select``: the rows whose key is not stored."""
        ...


@dataclass(frozen=True, slots=True)
class RollupWriter:
    """A table writer whose inserts also keep the rollups.

    The batch's rows are parsed once into a temporary table that both the insert and the rollup
    read. ``insert`` (every row new) rolls the batch up after inserting it; ``insert_new`` (a
    redelivery) rolls up the rows not stored yet and then inserts, so its last statement still
    answers the count.
    """

    view: str
    insert: str
    insert_new: str


def rollup_sql(table: str, staged: str, *, only_new: bool) -> str:
    """The statements rolling up the rows of ``table`` held in the temporary table ``staged``."""
    template = _INTERACTIONS if table == "interactions" else _FEEDBACK
    return template.format(
        staged=staged,
        new=_NEW[table] if only_new else "",
        key=_KEY,
        sums=_FEEDBACK_SUMS,
        pending_sums=", ".join(f"p.{c}" for c in _FEEDBACK_SUMS.split(", ")),
        add_feedback=_ADD_FEEDBACK,
        add_unit_feedback=_ADD_UNIT_FEEDBACK,
    )


def with_rollups(writers: Mapping[str, TableWriter]) -> dict[str, TableWriter]:
    """The store's writers by table, those of interactions and feedback keeping the rollups too."""
    out: dict[str, TableWriter] = {}
    for table, writer in writers.items():
        if table not in _NEW:
            out[table] = writer
            continue
        into, select = writer.insert.split(" BY NAME ", 1)
        into_new, select_new = writer.insert_new.split(" BY NAME ", 1)
        if select != select_new:
            raise ValueError(f"the {table} writer's inserts read different rows; the rollup cannot share them")
        staged = f"rollup_{writer.view}"
        stage = f"CREATE OR REPLACE TEMP TABLE {staged} AS {select};\n"
        # names and statements come from this module and feedback.ingest, never from events
        read = f"BY NAME SELECT * FROM {staged}"  # noqa: S608
        insert = f"{stage}{into} {read};\n{rollup_sql(table, staged, only_new=False)}"
        insert_new = f"{stage}{rollup_sql(table, staged, only_new=True)};\n{into_new} {read}"
        out[table] = RollupWriter(writer.view, insert, insert_new)
    return out


def rebuild_sql() -> str:
    """Statements that recompute every rollup from the raw tables in one transaction (migration 4's SQL).

    For a store whose raw rows changed outside the sink (an import, a retention purge): reports read
    the raw tables until the rollups are current again.
    """
    drop = "DROP TABLE unit_rollup; DROP TABLE feedback_rollup; DROP TABLE feedback_pending;"
    return f"BEGIN TRANSACTION; {drop}\n{dict(MIGRATIONS)[4]}\nCOMMIT"
