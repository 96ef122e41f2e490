"""Kafka consumer-group membership that survives a rebalance straddling a poll's timeout.

kafka-python 3.0.12 runs each JoinGroup/SyncGroup round trip as a task on its IO thread. When
``poll(timeout_ms=...)`` gives up while that task is in flight, the task is left running so that
the next poll can await it; but the next poll only does so if the coordinator still
``need_rejoin()``. A rebalance started because the topics' metadata changed (a topic the first
assignment did not know yet, or partitions added) clears that condition as soon as the leader
computes the new assignment, before the SyncGroup answer arrives. The next poll then sees nothing
to do, nobody ever reads the task's assignment, heartbeats stay disabled, and the consumer holds
no partitions for good: it is in the group and reads nothing.

``group_consumer`` builds the consumer with one guard: while a join task is outstanding, the
group still needs (re)joining, so polls keep awaiting it until the assignment is applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer

log = logging.getLogger(__name__)


def group_consumer(
    topics: Sequence[str], listener: ConsumerRebalanceListener | None = None, **config: Any
) -> KafkaConsumer:
    """A ``KafkaConsumer`` subscribed to ``topics`` in ``config['group_id']``'s group, guarded."""
    consumer = KafkaConsumer(**config)
    guard_join_in_flight(consumer)
    consumer.subscribe(list(topics), listener=listener)
    return consumer


def guard_join_in_flight(consumer: KafkaConsumer) -> bool:
    """Make ``consumer`` keep rejoining while a join is in flight; False when its client lacks the hook."""
    coordinator = getattr(consumer, "_coordinator", None)
    unguarded: Callable[[], bool] | None = getattr(coordinator, "need_rejoin", None)
    if coordinator is None or unguarded is None or not hasattr(coordinator, "_join_task"):
        log.warning("this kafka-python has no join task to guard; a rebalance cut short by a poll may stall")
        return False

    def need_rejoin() -> bool:
        return coordinator._join_task is not None or unguarded()

    coordinator.need_rejoin = need_rejoin
    return True
