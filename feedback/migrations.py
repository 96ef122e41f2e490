"""Versioned DuckDB schema migrations, applied in order at start.

Each migration is applied once, in one transaction with its row in ``schema_migrations``.
Append new migrations; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE interactions (
            event_id          VARCHAR PRIMARY KEY,
            schema_version    INTEGER NOT NULL,
            ts                TIMESTAMPTZ NOT NULL,
            interaction_id    VARCHAR NOT NULL,
            request_id        VARCHAR NOT NULL,
            unit_id           VARCHAR NOT NULL,
            arm               VARCHAR NOT NULL,
            role              VARCHAR NOT NULL,
            model_version     VARCHAR NOT NULL,
            deployment_id     VARCHAR NOT NULL,
            phase             VARCHAR NOT NULL,
            messages          JSON NOT NULL,
            completion        VARCHAR NOT NULL,
            prompt_tokens     INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            latency_ms        DOUBLE NOT NULL,
            ttft_ms           DOUBLE,
            finish_reason     VARCHAR,
            confidence        DOUBLE,
            error             VARCHAR,
            temperature       DOUBLE,
            top_p             DOUBLE,
            max_tokens        INTEGER,
            seed              BIGINT,
            kafka_partition   INTEGER NOT NULL,
            kafka_offset      BIGINT NOT NULL,
            ingested_at       TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
        );
        CREATE TABLE feedback (
            feedback_id       VARCHAR PRIMARY KEY,
            event_id          VARCHAR NOT NULL,
            schema_version    INTEGER NOT NULL,
            ts                TIMESTAMPTZ NOT NULL,
            interaction_id    VARCHAR NOT NULL,
            user_id           VARCHAR,
            thumb             VARCHAR,
            rating            INTEGER,
            comment           VARCHAR,
            correction        VARCHAR,
            kafka_partition   INTEGER NOT NULL,
            kafka_offset      BIGINT NOT NULL,
            ingested_at       TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
        );
        CREATE TABLE kafka_offsets (
            topic             VARCHAR NOT NULL,
            partition         INTEGER NOT NULL,
            next_offset       BIGINT NOT NULL,
            PRIMARY KEY (topic, partition)
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE audit (
            event_id          VARCHAR PRIMARY KEY,
            schema_version    INTEGER NOT NULL,
            ts                TIMESTAMPTZ NOT NULL,
            actor             VARCHAR NOT NULL,
            action            VARCHAR NOT NULL,
            resource          VARCHAR,
            outcome           VARCHAR NOT NULL,
            reason            VARCHAR,
            details           JSON NOT NULL,
            kafka_partition   INTEGER NOT NULL,
            kafka_offset      BIGINT NOT NULL,
            ingested_at       TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
        );
        -- what the sink refused, written in the same transaction as the batch's offsets, so the
        -- count survives restarts and is exact (the event itself went to the dead-letter topic)
        CREATE TABLE dead_letters (
            topic             VARCHAR NOT NULL,
            partition         INTEGER NOT NULL,
            kafka_offset      BIGINT NOT NULL,
            reason            VARCHAR NOT NULL,
            size_bytes        INTEGER NOT NULL,
            dead_lettered_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (topic, partition, kafka_offset)
        );
        ALTER TABLE kafka_offsets ADD COLUMN committed_at TIMESTAMPTZ;
        """,
    ),
    (
        3,
        """
        -- the lake export's high-water mark per table (rows with a later ingested_at are new)
        CREATE TABLE lake_exports (
            table_name        VARCHAR PRIMARY KEY,
            exported_through  TIMESTAMPTZ NOT NULL,
            exported_at       TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
        );
        """,
    ),
    (
        4,
        """
        -- interactions a refresh trained on: a later refresh never takes them again
        CREATE TABLE training_uses (
            interaction_id    VARCHAR PRIMARY KEY,
            refresh_key       VARCHAR NOT NULL,
            used_at           TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
        );
        """,
    ),
    (
        5,
        """
        -- per (deployment, phase, arm, unit): additive totals of the unit's served responses and of
        -- their feedback, appended by the sink in each batch's transaction (feedback.rollup) and merged
        -- into one row per unit from time to time; a report sums units instead of joining responses
        CREATE TABLE unit_rollup (
            deployment_id     VARCHAR NOT NULL,
            phase             VARCHAR NOT NULL,
            arm               VARCHAR NOT NULL,
            unit_id           VARCHAR NOT NULL,
            first_ts          TIMESTAMPTZ,
            responses         BIGINT NOT NULL,
            errors            BIGINT NOT NULL,
            latency_ms        DOUBLE NOT NULL,
            completion_tokens BIGINT NOT NULL,
            confidence        DOUBLE NOT NULL,
            confidences       BIGINT NOT NULL,
            feedbacks         BIGINT NOT NULL,
            ups               BIGINT NOT NULL,
            downs             BIGINT NOT NULL,
            rating_sum        BIGINT NOT NULL,
            ratings           BIGINT NOT NULL,
            corrected         BIGINT NOT NULL
        );
        -- feedback totals of interactions whose served response has not landed yet (feedback may come first)
        CREATE TABLE feedback_pending (
            interaction_id    VARCHAR PRIMARY KEY,
            feedbacks         BIGINT NOT NULL,
            ups               BIGINT NOT NULL,
            downs             BIGINT NOT NULL,
            rating_sum        BIGINT NOT NULL,
            ratings           BIGINT NOT NULL,
            corrections       BIGINT NOT NULL
        );
        -- rows of unit_rollup after its last merge (the next merge comes when it has doubled)
        CREATE TABLE rollup_state (merged_rows BIGINT NOT NULL);
        -- the rows already stored, rolled up once
        CREATE TEMP TABLE rollup_totals AS
        SELECT interaction_id, count(*) AS feedbacks, count(*) FILTER (WHERE thumb = 'up') AS ups,
               count(*) FILTER (WHERE thumb = 'down') AS downs, coalesce(sum(rating), 0) AS rating_sum,
               count(rating) AS ratings, count(correction) AS corrections
        FROM feedback GROUP BY interaction_id;
        INSERT INTO unit_rollup
        SELECT i.deployment_id, i.phase, i.arm, i.unit_id, min(i.ts), count(*), count(i.error), sum(i.latency_ms),
               sum(i.completion_tokens), coalesce(sum(i.confidence), 0), count(i.confidence),
               coalesce(sum(f.feedbacks), 0), coalesce(sum(f.ups), 0), coalesce(sum(f.downs), 0),
               coalesce(sum(f.rating_sum), 0), coalesce(sum(f.ratings), 0), count(*) FILTER (WHERE f.corrections > 0)
        FROM interactions i LEFT JOIN rollup_totals f USING (interaction_id)
        WHERE i.role = 'served'
        GROUP BY ALL;
        INSERT INTO feedback_pending
        SELECT * FROM rollup_totals
        WHERE interaction_id NOT IN (SELECT interaction_id FROM interactions WHERE role = 'served');
        DROP TABLE rollup_totals;
        INSERT INTO rollup_state SELECT count(*) FROM unit_rollup;
        """,
    ),
    (
        6,
        """
        -- the rollups leave the sink's transaction: a periodic job (feedback.rollup.refresh_rollup)
        -- rolls up the rows ingested since its watermark, and reports add the rows past it
        DROP TABLE rollup_state;
        -- one row: every interactions and feedback row with ingested_at <= through is in the rollups;
        -- the row counts at or before it guard that (a row ingested later with an earlier clock
        -- reading changes them, and the next refresh rebuilds)
        CREATE TABLE rollup_watermark (
            through           TIMESTAMPTZ NOT NULL,
            interactions_rows BIGINT NOT NULL,
            feedback_rows     BIGINT NOT NULL,
            merged_rows       BIGINT NOT NULL,  -- rows of unit_rollup after its last merge
            refreshed_at      TIMESTAMPTZ
        );
        -- start from nothing rolled up: the job's first refresh reads every stored row
        DELETE FROM unit_rollup;
        DELETE FROM feedback_pending;
        INSERT INTO rollup_watermark VALUES ('-infinity', 0, 0, 0, NULL);
        """,
    ),
)
