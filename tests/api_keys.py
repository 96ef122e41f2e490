"""API keys for tests: one key per role, on a test's own keys topic or in a key book given to an app."""

from __future__ import annotations

import os
from pathlib import Path

from feedback.access import ROLES
from feedback.apikeys import KeyBook, KeyRecord, new_key, publish_key
from feedback.settings import KafkaSettings

Keys = dict[str, str]  # role -> key text


def make_keys() -> tuple[Keys, list[KeyRecord]]:
    """A key per role (named after it): the texts and their records."""
    made = {role: new_key(f"test-{role}", role, created_by="tests") for role in ROLES}
    return {role: text for role, (text, _) in made.items()}, [record for _, record in made.values()]


def seeded_book() -> tuple[KeyBook, Keys, dict[str, str]]:
    """A key book holding a key per role, for apps whose Kafka is unreachable; also each key's label."""
    keys, records = make_keys()
    return KeyBook(records), keys, {record.role: record.principal().label for record in records}


def publish_keys(kafka: KafkaSettings) -> Keys:
    """A key per role, published on the keys topic of ``kafka`` (its topics exist)."""
    keys, records = make_keys()
    for record in records:
        publish_key(kafka, record)
    return keys


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


def label(keys: Keys, role: str) -> str:
    """How audit events and records name the key of ``role`` in ``keys``: ``name (key_id)``."""
    return f"test-{role} ({keys[role].split('_')[1]})"


def kafka_env(kafka: KafkaSettings) -> dict[str, str]:
    """Environment variables that point a ``flywheel`` process at ``kafka`` and its topic names."""
    env = {"FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    for field, name in kafka.topics.model_dump().items():
        if isinstance(name, str):
            env[f"FLYWHEEL_KAFKA__TOPICS__{field.upper()}"] = name
    return env


def gateway_process_env(kafka: KafkaSettings, workdir: Path, registry: Path) -> dict[str, str]:
    """A ``flywheel gateway`` process's environment: ``kafka``'s topics, a write-ahead log under ``workdir``, the
    adapter ``registry``, one torch thread (two gateway processes on two cores)."""
    return (
        os.environ
        | kafka_env(kafka)
        | {
            "HF_HUB_OFFLINE": "1",
            "FLYWHEEL_GATEWAY__WAL__DIR": str(workdir / "wal"),
            "FLYWHEEL_GATEWAY__DRAIN_TIMEOUT_S": "10",
            "FLYWHEEL_MODEL__REGISTRY_DIR": str(registry),
            "FLYWHEEL_MODEL__THREADS": "1",
        }
    )


# One key per role in one book, for the unit tests of apps whose Kafka is unreachable (they only read it).
SEEDED_BOOK, SEEDED_KEYS, SEEDED_LABELS = seeded_book()  # labels: how audit events name each key
USER = bearer(SEEDED_KEYS["user"])
ADMIN = bearer(SEEDED_KEYS["admin"])
