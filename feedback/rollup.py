"""Per-unit rollups kept in each batch's transaction, so A/B reports sum units instead of joining responses.

Tables (migration 5, ``MIGRATION``):

- ``unit_rollup``: additive rows per (deployment, phase, arm, unit) of served responses: first
  ``ts``, responses, errors, sums of latency, completion tokens and confidence, confidences given;
  and of their feedback: feedback rows, thumbs up, thumbs down, sum and count of ratings, responses
  with at least one correction. A unit's totals are the sums of its rows.
- ``feedback_pending``: feedback totals of interactions whose served response has not landed yet
  (the two topics are read independently, so feedback may come first).
- ``rollup_state``: how many rows ``unit_rollup`` had after its last merge.

Each batch appends one row per unit it touches (an append costs the same however large the table
is, where an update of stored rows does not), and once ``unit_rollup`` has doubled since its last
merge, the batch merges it into one row per unit: amortized, a constant cost per appended row.

The feedback rule is the report's (``evaluation.metrics.FEEDBACK_CTE``): every feedback row counts
(several per interaction add up); a response counts as corrected once, whatever number of
corrections it has (a correction adds to ``corrected`` only when its response had none stored
before). Each batch adds only rows new to the store: the usual batch is inserted in one piece
(every row is new or the insert fails), so its rollup reads the whole batch after the insert; a
redelivered batch is rolled up before its ``INSERT OR IGNORE``, from the rows whose key is not
stored yet. Feedback finds its response among the stored responses whose ids lie between the
batch's lowest and highest interaction id: ids are time-ordered, so zone maps skip older row
groups when feedback is recent. An interaction has one served response (DESIGN.md); the rollup
relies on it.

``RollupWriter`` wraps the store's table writers so the rollup runs inside the same statements
(and so the same transaction) as each insert, reading the batch's rows parsed once for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from feedback.migrations import MIGRATIONS

MIGRATION = 5  # the migration that creates the rollups and fills them from the rows stored before it
_KEY = "deployment_id, phase, arm, unit_id"
_FEEDBACK_SUMS = "feedbacks, ups, downs, rating_sum, ratings, corrections"
_ADD_FEEDBACK = ", ".join(f"{c} = {c} + excluded.{c}" for c in _FEEDBACK_SUMS.split(", "))
_UNIT_SUMS = (
    "responses, errors, latency_ms, completion_tokens, confidence, confidences, feedbacks, ups, downs, rating_sum, "
    "ratings, corrected"
)

# served responses of the batch, with the pending feedback of theirs -> one row per unit
_INTERACTIONS = """
INSERT INTO unit_rollup
SELECT b.deployment_id, b.phase, b.arm, b.unit_id, min(b.ts), count(*), count(b.error), sum(b.latency_ms),
       sum(b.completion_tokens), coalesce(sum(b.confidence), 0), count(b.confidence), coalesce(sum(p.feedbacks), 0),
       coalesce(sum(p.ups), 0), coalesce(sum(p.downs), 0), coalesce(sum(p.rating_sum), 0), coalesce(sum(p.ratings), 0),
       count(*) FILTER (WHERE p.corrections > 0)
FROM {staged} b LEFT JOIN feedback_pending p USING (interaction_id)
WHERE b.role = 'served'{new}
GROUP BY ALL;
DELETE FROM feedback_pending
WHERE interaction_id IN (SELECT interaction_id FROM {staged} b WHERE b.role = 'served'{new})
"""

# new feedback per interaction, keyed by its stored served response (else pending), with the
# corrections its response had before this batch
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
c AS (SELECT interaction_id, count(*) AS corrections_before FROM feedback
      WHERE interaction_id BETWEEN getvariable('rollup_low') AND getvariable('rollup_high') AND correction IS NOT NULL
        AND interaction_id IN (SELECT interaction_id FROM d WHERE corrections > 0){fresh}
      GROUP BY interaction_id)
SELECT d.*, coalesce(c.corrections_before, 0) AS corrections_before, s.deployment_id, s.phase, s.arm, s.unit_id
FROM d LEFT JOIN s USING (interaction_id) LEFT JOIN c USING (interaction_id);
INSERT INTO unit_rollup
SELECT {key}, NULL, 0, 0, 0, 0, 0, 0, sum(feedbacks), sum(ups), sum(downs), sum(rating_sum), sum(ratings),
       count(*) FILTER (WHERE corrections_before = 0 AND corrections > 0)
FROM rollup_feedback WHERE deployment_id IS NOT NULL GROUP BY ALL;
INSERT INTO feedback_pending
SELECT interaction_id, {sums} FROM rollup_feedback WHERE deployment_id IS NULL
ON CONFLICT DO UPDATE SET {add_feedback}
"""

# once unit_rollup has doubled since its last merge: one row per unit again
_MERGE = """
SET VARIABLE rollup_merge = (SELECT count(*) FROM unit_rollup) > (SELECT 2 * merged_rows + 1000 FROM rollup_state);
CREATE OR REPLACE TEMP TABLE rollup_merged AS
SELECT {key}, min(first_ts) AS first_ts, {summed} FROM unit_rollup WHERE getvariable('rollup_merge') GROUP BY ALL;
DELETE FROM unit_rollup WHERE getvariable('rollup_merge');
INSERT INTO unit_rollup SELECT * FROM rollup_merged;
UPDATE rollup_state SET merged_rows = (SELECT count(*) FROM rollup_merged) WHERE getvariable('rollup_merge')
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
    """The statements rolling up the rows of ``table`` held in the temporary table ``staged``, then a merge if due.

    ``only_new`` (before a redelivery's insert): only rows whose key is not stored count. Otherwise
    (after the usual insert) every staged row is new, and stored corrections of this batch's own
    rows are not counted as earlier ones.
    """
    template = _INTERACTIONS if table == "interactions" else _FEEDBACK
    fresh = "" if only_new else f" AND feedback_id NOT IN (SELECT feedback_id FROM {staged})"  # noqa: S608
    rollup = template.format(
        staged=staged,
        new=_NEW[table] if only_new else "",
        fresh=fresh,
        key=_KEY,
        sums=_FEEDBACK_SUMS,
        add_feedback=_ADD_FEEDBACK,
    )
    merge = _MERGE.format(key=_KEY, summed=", ".join(f"sum({c}) AS {c}" for c in _UNIT_SUMS.split(", ")))
    return f"{rollup.strip()};\n{merge.strip()}"


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
    """Statements that recompute every rollup from the raw tables in one transaction (the migration's own SQL).

    For a store whose raw rows changed outside the sink (an import, a retention purge): reports read
    the raw tables until the rollups are current again.
    """
    drop = "DROP TABLE unit_rollup; DROP TABLE feedback_pending; DROP TABLE rollup_state;"
    return f"BEGIN TRANSACTION; {drop}\n{dict(MIGRATIONS)[MIGRATION]}\nCOMMIT"
