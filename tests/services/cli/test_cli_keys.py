"""``flywheel keys create|list|revoke`` as a user runs it, against the real broker."""

from __future__ import annotations

import json

from api_keys import kafka_env
from test_cli import flywheel

from feedback.apikeys import parse_key, read_keys, verify
from feedback.settings import KafkaSettings


def test_create_list_and_revoke(kafka_isolated: KafkaSettings) -> None:
    env = kafka_env(kafka_isolated)
    created = flywheel("keys", "create", "--name", "ana", "--role", "analyst", env=env)
    assert created.returncode == 0, created.stderr
    text = created.stdout.strip()
    key_id, secret = parse_key(text)
    assert created.stderr.strip() == f"key {key_id} (ana, analyst) created; it is shown only now"

    [record] = read_keys(kafka_isolated).records()
    assert (record.key_id, record.name, record.role, record.revoked_at) == (key_id, "ana", "analyst", None)
    assert record.created_by.startswith("cli:")
    assert verify(record, secret)

    listed = flywheel("keys", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line) for line in listed.stdout.splitlines()] == [
        {
            "key_id": key_id,
            "name": "ana",
            "role": "analyst",
            "created_at": record.created_at.isoformat(),
            "created_by": record.created_by,
            "revoked_at": None,
        }
    ]
    assert secret not in listed.stdout
    assert record.hash not in listed.stdout
    table = flywheel("keys", "list", env=env)
    assert table.stdout.splitlines()[0].split() == ["id", "name", "role", "created", "revoked"]
    assert table.stdout.splitlines()[1].split()[:3] == [key_id, "ana", "analyst"]

    revoked = flywheel("keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"key {key_id} (ana, analyst) revoked"
    [after] = read_keys(kafka_isolated).records()
    assert after.revoked_at is not None

    again = flywheel("keys", "revoke", key_id, env=env)
    assert again.returncode == 1
    assert f"key {key_id} was already revoked at {after.revoked_at.isoformat()}" in again.stderr
    unknown = flywheel("keys", "revoke", "0" * 16, env=env)
    assert unknown.returncode == 1
    assert "no key '0000000000000000'; `flywheel keys list` shows the keys" in unknown.stderr


def test_bad_role_and_unreachable_broker(kafka_isolated: KafkaSettings) -> None:
    bad_role = flywheel("keys", "create", "--name", "x", "--role", "root", env=kafka_env(kafka_isolated))
    assert bad_role.returncode == 2
    assert "'root' is not one of" in bad_role.stderr
    too_long = flywheel("keys", "create", "--name", "x" * 101, "--role", "user", env=kafka_env(kafka_isolated))
    assert (too_long.returncode, too_long.stderr.strip()) == (2, "--name: between 1 and 100 characters (got 101)")
    down = kafka_isolated.model_copy(update={"bootstrap_servers": "127.0.0.1:9"})
    unreachable = flywheel(
        "keys",
        "create",
        "--name",
        "x",
        "--role",
        "user",
        env=kafka_env(down) | {"FLYWHEEL_KAFKA__REQUEST_TIMEOUT_MS": "2000"},
    )
    assert unreachable.returncode == 3
    assert "Kafka at 127.0.0.1:9 is not reachable" in unreachable.stderr
    assert unreachable.stdout == ""
