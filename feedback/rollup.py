"""Per-unit rollups kept by a periodic job behind a watermark, so A/B reports sum units instead of joining responses.

Tables (migrations 5 and 6):

- ``unit_rollup``: additive rows per (deployment, phase, arm, unit) of served responses: first
  ``ts``, responses, errors, sums of latency, completion tokens and confidence, confidences given;
  and of their feedback: feedback rows, thumbs up, thumbs down, sum and count of ratings, responses
  with at least one correction. A unit's totals are the sums of its rows.
- ``feedback_pending``: feedback totals of interactions that had no served response at the
  watermark (the two topics are read independently, so feedback may come first).
- ``rollup_watermark``: one row. ``through``: every ``interactions`` and ``feedback`` row with
  ``ingested_at <= through`` is rolled up, no later one is; the row counts of both tables at or
  before ``through`` when it was set; ``merged_rows`` after the last merge.

The sink never touches these tables: ``refresh_rollup`` runs in the worker's own thread every
``worker.rollup_interval_s``. Each refresh, in one transaction, rolls up the rows with
``through < ingested_at <= new through`` (the newest ``ingested_at`` stored) and moves the
watermark. Its delta (``DELTA``), per unit:

- each new served response, with its feedback: the pending totals (feedback stored earlier) plus
  the new feedback rows;
- new feedback on a response rolled up earlier: the new feedback's totals; the response becomes
  corrected only if it had no correction at or before the old watermark;
- new feedback on an interaction with no served response yet: added to ``feedback_pending``
  (removed again once the response is rolled up).

So every feedback row counts once (several per interaction add up) and a response counts as
corrected once, the rule of ``evaluation.metrics.FEEDBACK_CTE``; duplicates never reach the tables
(the sink dedups on ``event_id`` and ``feedback_id``). An interaction has one served response
(DESIGN.md); the rollup relies on it. Reports add the same delta computed up to now (``tail_sql``)
to ``unit_rollup``: exact and current, and the tail is at most one interval's arrivals.

Why ``ingested_at`` is a sound watermark where event time ``ts`` is not: it is DuckDB's
``current_timestamp``, the start of the transaction that stored the row. The store serializes its
write transactions (one connection, one lock) and the refresh runs under that lock, so every row
stored after a refresh comes from a transaction that started after it, with a later clock reading,
unless the wall clock stepped back. That case is caught: a row stored later with
``ingested_at <= through`` changes the row counts at or before ``through``, which every report and
every refresh compares with the stored ones (the tables are append-only; retention, the one
delete, rebuilds the rollups in its own transaction: ``rebuild_sql``). A report then reads the
raw tables, and the next refresh rebuilds the rollups from scratch.

After ``unit_rollup`` has doubled since its last merge, a refresh merges it into one row per unit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import duckdb

from feedback.errors import StoreError

_LOW = "(SELECT through FROM rollup_watermark)"
_HIGH = "getvariable('rollup_through')"  # the refresh's new watermark
_FEEDBACK_SUMS = ("feedbacks", "ups", "downs", "rating_sum", "ratings", "corrections")
_UNIT_SUMS = (
    "responses", "errors", "latency_ms", "completion_tokens", "confidence", "confidences", "feedbacks", "ups",
    "downs", "rating_sum", "ratings", "corrected",
)  # fmt: skip

# feedback rows past the watermark, per interaction ({upper}: up to the new watermark, or none)
_NEW_FEEDBACK = """SELECT interaction_id, count(*) AS feedbacks, count(*) FILTER (WHERE thumb = 'up') AS ups,
       count(*) FILTER (WHERE thumb = 'down') AS downs, coalesce(sum(rating), 0) AS rating_sum,
       count(rating) AS ratings, count(correction) AS corrections
FROM feedback WHERE ingested_at > {low}{upper} GROUP BY interaction_id"""

# the served responses those feedback rows are for, wherever they are (zone maps on the time-ordered
# ids skip most row groups when feedback is recent)
_RESPONDED = """SELECT interaction_id, ingested_at, deployment_id, phase, arm, unit_id FROM interactions
WHERE role = 'served' AND interaction_id IN (SELECT interaction_id FROM rollup_new_feedback){upper}"""

# interactions among those with a correction at or before the watermark
_CORRECTED_BEFORE = """SELECT DISTINCT interaction_id FROM feedback
WHERE ingested_at <= {low} AND correction IS NOT NULL
  AND interaction_id IN (SELECT interaction_id FROM rollup_new_feedback WHERE corrections > 0)"""

# per unit: new served responses with all their feedback so far, then new feedback on old responses
DELTA = """SELECT r.deployment_id, r.phase, r.arm, r.unit_id, min(r.ts) AS first_ts, count(*) AS responses,
       count(r.error) AS errors, sum(r.latency_ms) AS latency_ms, sum(r.completion_tokens) AS completion_tokens,
       coalesce(sum(r.confidence), 0) AS confidence, count(r.confidence) AS confidences,
       coalesce(sum(p.feedbacks), 0) + coalesce(sum(f.feedbacks), 0) AS feedbacks,
       coalesce(sum(p.ups), 0) + coalesce(sum(f.ups), 0) AS ups,
       coalesce(sum(p.downs), 0) + coalesce(sum(f.downs), 0) AS downs,
       coalesce(sum(p.rating_sum), 0) + coalesce(sum(f.rating_sum), 0) AS rating_sum,
       coalesce(sum(p.ratings), 0) + coalesce(sum(f.ratings), 0) AS ratings,
       count(*) FILTER (WHERE coalesce(p.corrections, 0) + coalesce(f.corrections, 0) > 0) AS corrected
FROM interactions r LEFT JOIN feedback_pending p USING (interaction_id)
     LEFT JOIN rollup_new_feedback f USING (interaction_id)
WHERE r.role = 'served' AND r.ingested_at > {low}{upper}{deployment}
GROUP BY ALL
UNION ALL
SELECT o.deployment_id, o.phase, o.arm, o.unit_id, NULL, 0, 0, 0, 0, 0, 0, sum(f.feedbacks), sum(f.ups),
       sum(f.downs), sum(f.rating_sum), sum(f.ratings),
       count(*) FILTER (WHERE f.corrections > 0 AND b.interaction_id IS NULL)
FROM rollup_responded o JOIN rollup_new_feedback f USING (interaction_id)
     LEFT JOIN rollup_corrected_before b USING (interaction_id)
WHERE o.ingested_at <= {low}{deployment}
GROUP BY ALL"""

# the stored rows at or before the watermark are those rolled up (see the module docstring)
CURRENT = """(SELECT count(*) FROM interactions WHERE ingested_at <= {low})
    = (SELECT interactions_rows FROM rollup_watermark)
AND (SELECT count(*) FROM feedback WHERE ingested_at <= {low}) = (SELECT feedback_rows FROM rollup_watermark)"""

_RESET = """
DELETE FROM unit_rollup WHERE getvariable('rollup_reset');
DELETE FROM feedback_pending WHERE getvariable('rollup_reset');
UPDATE rollup_watermark SET through = '-infinity', interactions_rows = 0, feedback_rows = 0, merged_rows = 0
WHERE getvariable('rollup_reset')
"""

_REFRESH = """
SET VARIABLE rollup_through = greatest({low},
    coalesce((SELECT max(ingested_at) FROM interactions WHERE ingested_at > {low}), '-infinity'),
    coalesce((SELECT max(ingested_at) FROM feedback WHERE ingested_at > {low}), '-infinity'));
CREATE OR REPLACE TEMP TABLE rollup_new_feedback AS {new_feedback};
CREATE OR REPLACE TEMP TABLE rollup_responded AS {responded};
CREATE OR REPLACE TEMP TABLE rollup_corrected_before AS {corrected_before};
CREATE OR REPLACE TEMP TABLE rollup_delta AS {delta};
DELETE FROM feedback_pending WHERE interaction_id IN (SELECT interaction_id FROM interactions
    WHERE role = 'served' AND ingested_at > {low} AND ingested_at <= {high});
INSERT INTO feedback_pending
SELECT * FROM rollup_new_feedback WHERE interaction_id NOT IN (SELECT interaction_id FROM rollup_responded)
ON CONFLICT DO UPDATE SET {add_feedback};
INSERT INTO unit_rollup SELECT * FROM rollup_delta;
UPDATE rollup_watermark SET
    interactions_rows = interactions_rows
        + (SELECT count(*) FROM interactions WHERE ingested_at > {low} AND ingested_at <= {high}),
    feedback_rows = feedback_rows + (SELECT count(*) FROM feedback WHERE ingested_at > {low} AND ingested_at <= {high}),
    through = {high}, refreshed_at = current_timestamp;
SET VARIABLE rollup_merge = (SELECT count(*) FROM unit_rollup) > (SELECT 2 * merged_rows + 1000 FROM rollup_watermark);
CREATE OR REPLACE TEMP TABLE rollup_merged AS
SELECT deployment_id, phase, arm, unit_id, min(first_ts) AS first_ts, {summed}
FROM unit_rollup WHERE getvariable('rollup_merge') GROUP BY ALL;
DELETE FROM unit_rollup WHERE getvariable('rollup_merge');
INSERT INTO unit_rollup SELECT * FROM rollup_merged;
UPDATE rollup_watermark SET merged_rows = (SELECT count(*) FROM rollup_merged) WHERE getvariable('rollup_merge');
DROP TABLE rollup_new_feedback; DROP TABLE rollup_responded; DROP TABLE rollup_corrected_before;
DROP TABLE rollup_delta; DROP TABLE rollup_merged
"""


class Store(Protocol):
    """What the refresh needs of ``feedback.store.DuckDBStore``."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run trusted statements under the store's write lock."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of ``sql``."""
        ...


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """The watermark after a refresh, and how many stored rows it covers."""

    through: datetime | None  # None: nothing stored yet
    interactions_rows: int
    feedback_rows: int


def refresh_sql(*, rebuild: bool = False) -> str:
    """The statements of one refresh (to run inside a transaction): a rebuild first if the guard fails or asked."""
    upper = f" AND ingested_at <= {_HIGH}"
    reset = "true" if rebuild else f"NOT ({CURRENT.format(low=_LOW)})"
    body = _REFRESH.format(
        low=_LOW,
        high=_HIGH,
        new_feedback=_NEW_FEEDBACK.format(low=_LOW, upper=upper),
        responded=_RESPONDED.format(upper=upper),
        corrected_before=_CORRECTED_BEFORE.format(low=_LOW),
        delta=DELTA.format(low=_LOW, upper=" AND r.ingested_at <= " + _HIGH, deployment=""),
        add_feedback=", ".join(f"{c} = {c} + excluded.{c}" for c in _FEEDBACK_SUMS),
        summed=", ".join(f"sum({c}) AS {c}" for c in _UNIT_SUMS),
    )
    return f"SET VARIABLE rollup_reset = {reset};\n{_RESET.strip()};\n{body.strip()}"


def rebuild_sql() -> str:
    """The statements recomputing the rollups from every stored row (to run inside a transaction)."""
    return refresh_sql(rebuild=True)


def tail_sql(deployment: str) -> str:
    """CTEs ending in ``rollup_tail``: the delta of the rows past the watermark (as ``DELTA``), for the
    deployment given as the SQL expression ``deployment`` (e.g. a bound parameter ``$1``)."""
    where = f" AND deployment_id = {deployment}"
    return (
        f"rollup_new_feedback AS ({_NEW_FEEDBACK.format(low=_LOW, upper='')}),\n"
        f"rollup_responded AS ({_RESPONDED.format(upper='')}),\n"
        f"rollup_corrected_before AS ({_CORRECTED_BEFORE.format(low=_LOW)}),\n"
        f"rollup_tail AS ({DELTA.format(low=_LOW, upper='', deployment=where)})"
    )


def current_sql() -> str:
    """A boolean SQL expression: whether the stored rows at or before the watermark are the ones rolled up."""
    return f"({CURRENT.format(low=_LOW)})"


def refresh_rollup(store: Store, *, rebuild: bool = False) -> RefreshResult:
    """Roll up every row ingested since the watermark and move it, in one transaction under the store's lock.

    Rebuilds from scratch when asked or when the guard finds rows the watermark does not account for.
    """
    execute_in_transaction(store, refresh_sql(rebuild=rebuild), "refreshing the rollups")
    try:
        row = store.query(
            "SELECT nullif(through, '-infinity') AS through, interactions_rows, feedback_rows FROM rollup_watermark"
        )[0]
    except duckdb.Error as exc:
        raise StoreError(f"reading the rollups' watermark failed: {exc}") from exc
    return RefreshResult(row["through"], int(row["interactions_rows"]), int(row["feedback_rows"]))


def execute_in_transaction(store: Store, statements: str, what: str) -> None:
    """Run ``statements`` in one transaction, in one call (so under one hold of the store's lock).

    A failure rolls back and raises ``StoreError`` naming ``what``.
    """
    try:
        store.execute(f"BEGIN TRANSACTION;\n{statements};\nCOMMIT")
    except duckdb.Error as exc:
        with contextlib.suppress(duckdb.Error):  # nothing was begun, or it is already gone
            store.execute("ROLLBACK")
        raise StoreError(f"{what} failed: {exc}") from exc
