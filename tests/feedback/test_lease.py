"""The refresh lease on the real broker: one holder at a time, handed over when it leaves."""

from __future__ import annotations

import threading
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pipeline_events import run_in_thread, wait_until

from feedback.lease import KafkaLease
from feedback.settings import KafkaSettings


def start(kafka: KafkaSettings, name: str) -> tuple[KafkaLease, threading.Thread]:
    lease = KafkaLease(kafka, name=name, session_timeout_ms=6000, poll_ms=200)
    return lease, run_in_thread(lease.run, f"lease-{name}")


def stable_members(kafka: KafkaSettings, group: str) -> int:
    """Members of ``group`` once it is stable (0 while it rebalances)."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        described: dict[str, Any] = admin.describe_groups([group])[group]
    except KafkaError:  # the group's coordinator is still being set up
        return 0
    finally:
        admin.close()
    return len(described["members"]) if described["group_state"] == "Stable" else 0


def test_exactly_one_worker_holds_the_lease_and_it_moves_when_the_holder_leaves(
    kafka_isolated: KafkaSettings,
) -> None:
    first, first_thread = start(kafka_isolated, "first")
    second, second_thread = start(kafka_isolated, "second")
    try:
        wait_until(lambda: stable_members(kafka_isolated, first.group) == 2, what="both workers in a stable group")
        wait_until(lambda: first.held.is_set() or second.held.is_set(), what="a lease holder")
        holder, other = (first, second) if first.held.is_set() else (second, first)
        holder_thread = first_thread if holder is first else second_thread
        assert not other.held.is_set()

        holder.stop()
        holder_thread.join(timeout=60)
        assert not holder.held.is_set()
        wait_until(other.held.is_set, what="the lease to move to the other worker")
    finally:
        for lease, thread in ((first, first_thread), (second, second_thread)):
            lease.stop()
            thread.join(timeout=60)
    assert not first.held.is_set()
    assert not second.held.is_set()
