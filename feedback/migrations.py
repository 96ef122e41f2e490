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
)
